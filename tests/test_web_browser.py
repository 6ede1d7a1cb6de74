"""The web app's page in a real headless browser (Debian's chromium, driven by Selenium through
chromedriver; nothing is downloaded): upload a phantom, wait for the result, toggle an overlay,
change the window, download the report and the lesion map."""

from __future__ import annotations

import io
import json
import shutil
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from conftest import web_server
from PIL import Image

from slice2d.pipeline import Models
from slice2d.runs import SHIPPED
from slice2d.synth import make_phantom

pytest.importorskip("fastapi", reason="the web extra is not installed (pip install -e '.[web]')")
webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install -e '.[test]')")
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

from slice2d.web.jobs import Settings  # noqa: E402

CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(not (CHROMIUM and CHROMEDRIVER),
                                reason="Debian's chromium and chromium-driver are not installed "
                                       "(apt-get install chromium chromium-driver; .ci/run does)")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--enable-unsafe-swiftshader", "--disable-quic",
         "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--window-size=1400,1000"]


@pytest.fixture
def browser(tmp_path: Path):
    """Headless chromium with a fresh profile, saving downloads into ``tmp_path / 'downloads'``."""
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in FLAGS + [f"--user-data-dir={tmp_path / 'profile'}"]:
        options.add_argument(flag)
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    options.add_experimental_option("prefs", {"download.default_directory": str(downloads),
                                              "download.prompt_for_download": False})
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    driver.downloads = downloads
    try:
        yield driver
    finally:
        driver.quit()


def wait_for_file(folder: Path, name: str, timeout: float = 30) -> Path:
    """The file ``name`` once the browser has finished writing it into ``folder``."""
    path, deadline = folder / name, time.time() + timeout
    while time.time() < deadline:
        if path.is_file() and not list(folder.glob("*.crdownload")):
            return path
        time.sleep(0.1)
    raise AssertionError(f"{name} was not downloaded; the folder holds {sorted(p.name for p in folder.iterdir())}")


def lesion_pixels(browser) -> int:
    """How many pixels of the viewer's canvas, as shown, are lesion red (no other map is red)."""
    shot = np.asarray(Image.open(io.BytesIO(browser.find_element(By.ID, "viewer").screenshot_as_png)).convert("RGB"))
    r, g, b = (shot[..., k].astype(int) for k in range(3))
    return int(((r > 150) & (g < 100) & (b < 100)).sum())


def test_upload_view_toggle_and_take_home(browser, tmp_path):
    ph = make_phantom((64, 64, 20), spacing=(5.0, 5.0, 12.0), seed=3, lesion_free=False)
    upload = tmp_path / "chest.nii.gz"
    nib.save(nib.Nifti1Image(ph.image.astype(np.int16), ph.affine), upload)
    settings = Settings(models=Models(main=SHIPPED / "lesions-128"), workspace_parent=tmp_path)
    with web_server(settings) as (url, _):
        browser.get(url + "/")
        browser.find_element(By.ID, "file").send_keys(str(upload))
        browser.find_element(By.ID, "go").click()
        WebDriverWait(browser, 240).until(lambda b: b.execute_script("return window.slice2d.ready")
                                          or "error" in b.find_element(By.ID, "status").get_attribute("class"))
        status = browser.find_element(By.ID, "status").text
        assert "chest.nii.gz: done" in status, status
        js = "return window.slice2d.nv.volumes.map(v => [v.name, v.opacity, v.hdr.dims.slice(1, 4)])"
        volumes = browser.execute_script(js)
        # the scan, then zones, lungs and lesions over it, each on the upload's grid
        assert [name for name, _, _ in volumes] == ["chest-scan.nii.gz", "chest-zones.nii.gz",
                                                     "chest-lungs.nii.gz", "chest-lesions.nii.gz"]
        assert all(dims == [64, 64, 20] for _, _, dims in volumes)
        assert [opacity for _, opacity, _ in volumes] == [1, 0, 0.3, 0.8]  # zones hidden at first

        # the viewer opens on the slice with the most lesion, drawn in red over the scan
        WebDriverWait(browser, 30).until(lambda b: lesion_pixels(b) > 50)
        browser.find_element(By.ID, "show-lesions").click()
        assert browser.execute_script(js)[3][1] == 0
        WebDriverWait(browser, 30).until(lambda b: lesion_pixels(b) == 0)
        browser.find_element(By.ID, "show-zones").click()
        assert browser.execute_script(js)[1][1] == pytest.approx(0.4)
        browser.find_element(By.ID, "show-lesions").click()
        assert browser.execute_script(js)[3][1] == pytest.approx(0.8)
        WebDriverWait(browser, 30).until(lambda b: lesion_pixels(b) > 50)
        browser.find_element(By.CSS_SELECTOR, "[data-window=mediastinum]").click()
        assert browser.execute_script("return [window.slice2d.nv.volumes[0].cal_min, "
                                      "window.slice2d.nv.volumes[0].cal_max]") == [-160, 240]

        browser.find_element(By.ID, "dl-report_json").click()
        report = json.loads(wait_for_file(browser.downloads, "chest-report.json").read_text())
        assert report == browser.execute_script("return window.slice2d.job.report")
        assert browser.find_element(By.ID, "tss").text.startswith(f"TSS {report['tss']} / {report['tss_max']}")
        shown = [row.get_attribute("data-region") for row in browser.find_elements(By.CSS_SELECTOR, ".barrow")]
        assert shown == list(report["regions"])

        browser.find_element(By.ID, "dl-lesions").click()
        lesions = nib.load(wait_for_file(browser.downloads, "chest-lesions.nii.gz"))
        assert lesions.shape == (64, 64, 20)
        np.testing.assert_allclose(lesions.affine, ph.affine, atol=1e-5)
        assert np.asarray(lesions.dataobj).any()
