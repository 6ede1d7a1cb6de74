"""The web app's JSON API (``slice2d serve``) on a real server: the report is ``slice2d predict``'s,
maps keep the upload's grid, bad uploads get a 4xx JSON error, archives never write outside the
job's folder, two uploads at once get their own results, finished jobs are deleted."""

from __future__ import annotations

import contextlib
import http.client
import io
import json
import socket
import stat
import time
import uuid
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.error import HTTPError
from urllib.request import Request, urlopen

import nibabel as nib
import numpy as np
import pytest
from conftest import assert_user_error, invoke, web_server
from PIL import Image

from slice2d.pipeline import Models, segment
from slice2d.runs import SHIPPED
from slice2d.synth import make_phantom

pytest.importorskip("fastapi", reason="the web extra is not installed (pip install -e '.[web]')")
from slice2d.web.jobs import JobStore, Settings  # noqa: E402

MODELS = Models(main=SHIPPED / "lesions-128")  # the faster shipped lesion model
LIMIT = 4 * 2**20  # the test server's upload limit: archives may unpack to 4 times that


def write_phantom(path: Path, shape: tuple[int, int, int], seed: int, ras: bool = False) -> Path:
    """A small synthetic chest CT (HU, int16), stored LPS as made or turned to RAS."""
    ph = make_phantom(shape, spacing=(5.0, 5.0, 12.0), seed=seed, lesion_free=False)
    img = nib.Nifti1Image(ph.image.astype(np.int16), ph.affine)
    nib.save(nib.as_closest_canonical(img) if ras else img, path)
    return path


def post(url: str, name: str, data: bytes) -> tuple[int, dict]:
    """POST ``data`` as the multipart field ``file`` named ``name``; returns status and JSON."""
    boundary = uuid.uuid4().hex
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{name}\"\r\n"
            f"Content-Type: application/octet-stream\r\n\r\n").encode() + data + f"\r\n--{boundary}--\r\n".encode()
    request = Request(url, data=body, headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    return _json(request)


def get(url: str) -> tuple[int, dict]:
    return _json(Request(url))


def _json(request: Request) -> tuple[int, dict]:
    try:
        with urlopen(request, timeout=300) as response:
            return response.status, json.loads(response.read())
    except HTTPError as exc:
        return exc.code, json.loads(exc.read())


def download(base: str, link: str, dest: Path) -> Path:
    with urlopen(base + link, timeout=60) as response:
        dest.write_bytes(response.read())
    return dest


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    parent = tmp_path_factory.mktemp("web")
    with web_server(Settings(models=MODELS, max_upload_bytes=LIMIT, workspace_parent=parent)) as (url, store):
        yield url, store


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("phantoms")
    return {"lps": write_phantom(folder / "lps.nii.gz", (64, 64, 20), seed=3),
            "ras": write_phantom(folder / "ras.nii.gz", (56, 64, 18), seed=5, ras=True)}


@pytest.fixture(scope="module")
def predicted(server, phantoms) -> dict[str, dict]:
    """The two phantoms sent at once: ``lps`` to POST /api/predict (which waits), ``ras`` to
    POST /api/jobs (answered at once, then followed). Also records what GET /api/jobs/<id> said
    about ``ras`` while ``lps``'s request was still waiting."""
    url, _ = server
    with ThreadPoolExecutor(1) as pool:
        waiting = pool.submit(post, f"{url}/api/predict", "lps.nii.gz", phantoms["lps"].read_bytes())
        status, queued = post(f"{url}/api/jobs", "ras.nii.gz", phantoms["ras"].read_bytes())
        assert status == 202, queued
        _, meanwhile = get(f"{url}/api/jobs/{queued['job']}")
        answers = {"lps": waiting.result()}
    assert not waiting.exception()
    job = meanwhile
    while job["state"] not in ("done", "failed"):
        time.sleep(0.5)
        status, job = get(f"{url}/api/jobs/{queued['job']}")
    answers["ras"] = (status, job)
    for name, (status, job) in answers.items():
        assert status == 200 and job["state"] == "done", (name, job)
    return {"lps": answers["lps"][1], "ras": answers["ras"][1], "meanwhile": meanwhile}


def test_two_uploads_at_once_get_their_own_results(server, phantoms, predicted, tmp_path):
    url, _ = server
    lps, ras = predicted["lps"], predicted["ras"]
    assert predicted["meanwhile"]["state"] in ("queued", "unpacking", "predicting")  # answered while busy
    assert lps["job"] != ras["job"] and len(lps["job"]) >= 20
    assert (lps["report"]["case"], ras["report"]["case"]) == ("lps", "ras")
    for name, job in (("lps", lps), ("ras", ras)):
        lesions = nib.load(download(url, job["links"]["lesions"], tmp_path / f"{name}.nii.gz"))
        assert lesions.shape == nib.load(phantoms[name]).shape
    # one job's file is not found under the other's id
    with pytest.raises(HTTPError) as err:
        urlopen(url + lps["links"]["lesions"].replace(lps["job"], ras["job"]))
    assert err.value.code == 404


def test_report_is_predicts_report(phantoms, predicted, tmp_path):
    segment(phantoms["lps"], tmp_path / "out", MODELS)
    expected = json.loads((tmp_path / "out" / "severity" / "lps.json").read_text())
    report = predicted["lps"]["report"]
    assert set(report) == set(expected)
    assert report == expected


def test_maps_have_the_uploads_grid(server, phantoms, predicted, tmp_path):
    url, _ = server
    for name, job in (("lps", predicted["lps"]), ("ras", predicted["ras"])):
        upload = nib.load(phantoms[name])
        for key, values in (("lesions", {0, 1, 2}), ("lungs", {0, 1, 2}), ("zones", set(range(7))), ("scan", None)):
            img = nib.load(download(url, job["links"][key], tmp_path / f"{name}-{key}.nii.gz"))
            assert img.shape == upload.shape, (name, key)
            np.testing.assert_allclose(img.affine, upload.affine, atol=1e-5)
            if values:
                assert set(np.unique(np.asarray(img.dataobj))) <= values, (name, key)
        lungs = np.asarray(nib.load(tmp_path / f"{name}-lungs.nii.gz").dataobj)
        zones = np.asarray(nib.load(tmp_path / f"{name}-zones.nii.gz").dataobj)
        np.testing.assert_array_equal(zones > 0, lungs > 0)
        assert set(np.unique(zones[lungs == 1])) == {1, 2, 3}  # the right lung holds the right zones


def test_take_home_files(server, predicted, tmp_path):
    url, _ = server
    job = predicted["lps"]
    report = json.loads(download(url, job["links"]["report_json"], tmp_path / "r.json").read_text())
    assert report == job["report"]
    assert download(url, job["links"]["report_pdf"], tmp_path / "r.pdf").read_bytes().startswith(b"%PDF")
    assert download(url, job["links"]["report_png"], tmp_path / "r.png").read_bytes().startswith(b"\x89PNG")
    rows = download(url, job["links"]["cohort_csv"], tmp_path / "c.csv").read_text().splitlines()
    assert rows[0].startswith("case,") and rows[1].split(",")[0] == "lps" and len(rows) == 2
    with zipfile.ZipFile(download(url, job["links"]["maps_zip"], tmp_path / "m.zip")) as zf:
        assert sorted(zf.namelist()) == ["lps-lesions.nii.gz", "lps-lungs.nii.gz", "lps-zones.nii.gz"]
    # the viewer opens on the axial slice (axis 2 of this LPS scan) with the most lesion
    scan = nib.load(download(url, job["links"]["scan"], tmp_path / "s.nii.gz"))
    lesions = np.asarray(nib.load(download(url, job["links"]["lesions"], tmp_path / "l.nii.gz")).dataobj)
    vox = nib.affines.apply_affine(np.linalg.inv(scan.affine), job["view"]["focus_mm"])
    assert round(vox[2]) == np.argmax((lesions > 0).sum(axis=(0, 1)))
    np.testing.assert_allclose(vox[:2], (np.array(scan.shape[:2]) - 1) / 2, atol=1e-3)

def _png(value: int, size=(40, 48)) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.full(size, value, np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def _zip(entries: dict[str | zipfile.ZipInfo, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
    return buffer.getvalue()


def _symlink(name: str, target: str) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name)
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    return info


@pytest.mark.parametrize("entry", ["../evil.png", "slices/../../evil.png", "/tmp/evil.png", "C:/evil.png",
                                   "slices\\..\\..\\evil.png", _symlink("slices/evil.png", "/etc/passwd")])
def test_zip_entries_that_leave_the_folder_are_refused(server, entry):
    url, store = server
    archive = _zip({"slices/001.png": _png(10), entry: b"x" if isinstance(entry, str) else b"/etc/passwd"})
    status, answer = post(f"{url}/api/predict", "slices.zip", archive)
    assert status == 400, answer
    name = entry if isinstance(entry, str) else entry.filename
    assert repr(name) in answer["error"] and "slices.zip" in answer["error"]
    assert not list(store.workspace.parent.rglob("evil.png")) and not list(Path("/tmp").glob("evil.png"))


def test_zip_bomb_is_refused(server):
    url, _ = server
    status, answer = post(f"{url}/api/predict", "bomb.zip", _zip({"slices/001.png": bytes(4 * LIMIT + 1)}))
    assert status == 413, answer
    assert "bomb.zip" in answer["error"] and "limit" in answer["error"]


@pytest.mark.parametrize("name, data, status, fragment", [
    ("scan.nii.gz", b"\x1f\x8b\x08\x00 damaged", 422, "scan.nii.gz"),
    ("notes.txt", b"hello", 400, ".nii or .nii.gz"),
    ("slices.zip", b"PK not a zip", 400, "not a readable zip"),
])
def test_bad_uploads_get_a_4xx_and_the_server_goes_on(server, name, data, status, fragment):
    url, store = server
    got, answer = post(f"{url}/api/predict", name, data)
    assert got == status, answer
    assert fragment in answer["error"]
    assert str(store.workspace) not in answer["error"]  # the server's folders stay private
    with urlopen(url + "/", timeout=30) as page:
        assert page.status == 200 and b"niivue.umd.js" in page.read()


def _raw_post(url: str, headers: dict, chunks: list[bytes]) -> tuple[int, dict]:
    """POST /api/predict with the given headers, sending ``chunks`` (chunked encoding when the
    headers say so), then read the answer."""
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=60)
    conn.putrequest("POST", "/api/predict")
    for key, value in headers.items():
        conn.putheader(key, value)
    conn.endheaders()
    for chunk in chunks:
        conn.send(b"%x\r\n%s\r\n" % (len(chunk), chunk))
    if chunks:
        conn.send(b"0\r\n\r\n")
    with contextlib.closing(conn):
        response = conn.getresponse()
        return response.status, json.loads(response.read())


def test_uploads_over_the_limit_get_413(server):
    url, store = server
    form = {"Content-Type": "multipart/form-data; boundary=b"}
    # refused on its Content-Length alone, before any of it is read
    status, answer = _raw_post(url, {**form, "Content-Length": str(2 * LIMIT)}, [])
    assert status == 413 and "limit of 4 MiB" in answer["error"], answer
    # without a length (chunked): counted as it comes
    head = b'--b\r\nContent-Disposition: form-data; name="file"; filename="big.nii.gz"\r\n\r\n'
    status, answer = _raw_post(url, {**form, "Transfer-Encoding": "chunked"}, [head] + [bytes(2**20)] * 5)
    assert status == 413 and "limit of 4 MiB" in answer["error"], answer
    assert not list(store.workspace.rglob("big.nii.gz"))


def test_unknown_job_and_file(server):
    url, _ = server
    assert get(f"{url}/api/jobs/nope")[0] == 404
    with pytest.raises(HTTPError) as err:
        urlopen(f"{url}/api/jobs/nope/files/x.nii.gz")
    assert err.value.code == 404


def test_workspace_is_private_and_finished_jobs_are_deleted(tmp_path):
    store = JobStore(Settings(keep_seconds=60, workspace_parent=tmp_path))
    try:
        assert stat.S_IMODE(store.workspace.stat().st_mode) == 0o700
        job = store.new_job("x.nii.gz")
        job.upload.write_bytes(b"not a volume")
        store.submit(job)
        deadline = time.time() + 60
        while job.finished is None and time.time() < deadline:
            time.sleep(0.05)
        assert job.state == "failed" and job.status == 422 and job.error.startswith("x.nii.gz")
        assert store.sweep(now=job.finished + 59) == 0 and job.folder.is_dir()
        assert store.sweep(now=job.finished + 61) == 1
        assert not job.folder.exists() and store.get(job.id) is None
    finally:
        store.close()
    assert not store.workspace.exists()


def test_an_archive_finds_its_series_folder(tmp_path):
    from slice2d.web.uploads import unpack_zip

    archive = tmp_path / "series.zip"
    archive.write_bytes(_zip({"export/DICOM/0001/IM1": b"a", "export/DICOM/0001/IM2": b"b", "__MACOSX/._IM1": b"",
                              "export/DICOM/0001/.DS_Store": b""}))
    found = unpack_zip(archive, tmp_path / "in", 2**20, "series.zip")
    assert found == tmp_path / "in" / "export" / "DICOM" / "0001"
    assert sorted(p.name for p in found.iterdir()) == ["IM1", "IM2"]


def test_a_slice_folder_takes_home_its_png_maps(tmp_path):
    """What ``slice2d predict`` writes for a folder of slices (made here by hand) is offered as the
    stack for the viewer and the PNG maps, one per slice, in the zip."""
    from slice2d.images import stack_geometry
    from slice2d.report import score_case, write_cohort_csv
    from slice2d.severity import SeverityOptions
    from slice2d.web.results import take_home

    source, out = tmp_path / "slices", tmp_path / "out"
    shape, names = (40, 48), ["s1", "s2", "s10"]
    lungs = np.zeros(shape + (3,), np.uint8)
    lungs[8:32, 6:20], lungs[8:32, 28:42] = 1, 2
    lesions = np.zeros_like(lungs)
    lesions[10:16, 8:14, 1] = 1
    for folder in (source, out / "lungs"):
        folder.mkdir(parents=True)
    for k, name in enumerate(names):
        Image.fromarray(np.full(shape, 60, np.uint8)).save(source / f"{name}.png")
        Image.fromarray(lesions[:, :, k]).save(out / f"{name}.png")
        Image.fromarray(lungs[:, :, k]).save(out / "lungs" / f"{name}.png")
    stack = nib.Nifti1Image(np.full(lungs.shape, 60, np.uint8), stack_geometry(shape, 3).affine)
    (out / "stack").mkdir()
    for part, data in (("image", stack.get_fdata()), ("lesions", lesions), ("lungs", lungs)):
        nib.save(nib.Nifti1Image(data.astype(np.uint8), stack.affine), out / "stack" / f"{part}.nii.gz")
    report = score_case(None, lesions, lungs, None, stack.affine, "slices", SeverityOptions(),
                        out / "severity" / "slices.json")
    write_cohort_csv([report], out / "severity" / "cohort.csv")

    result = take_home(source, out, tmp_path / "take-home", Settings())
    assert result.intensity == "8-bit" and result.report["case"] == "slices"
    assert result.files[result.links["scan"]] == out / "stack" / "image.nii.gz"
    with zipfile.ZipFile(result.files[result.links["maps_zip"]]) as zf:
        assert sorted(zf.namelist()) == sorted(f"{kind}/{n}.png" for kind in ("lesions", "lungs") for n in names)
        np.testing.assert_array_equal(np.asarray(Image.open(zf.open("lesions/s2.png"))), lesions[:, :, 1])
    zones = np.asarray(nib.load(result.files[result.links["zones"]]).dataobj)
    np.testing.assert_array_equal(zones > 0, lungs > 0)


def test_serve_refuses_a_bad_model_or_a_taken_port(tmp_path):
    assert_user_error(invoke("serve", "--model", tmp_path / "missing"), "missing", "model run folder not found")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert_user_error(invoke("serve", "--port", port), f"127.0.0.1:{port}", "choose another --port")


def test_a_zipped_dicom_series(server, tmp_path):
    """A DICOM series zipped in nested folders: maps on the series' grid, and its DICOM SEG."""
    pytest.importorskip("highdicom", reason="the dicom-seg extra (highdicom) is not installed")
    import pydicom
    from test_dicom_seg import write_series

    from slice2d.dicom import load_series

    url, _ = server
    ph = make_phantom((64, 64, 20), spacing=(5.0, 5.0, 12.0), seed=3, lesion_free=False)
    paths = write_series(ph.image.astype(np.int16), ph.affine, tmp_path / "export" / "chest")
    archive = tmp_path / "chest.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for path in paths:
            zf.write(path, path.relative_to(tmp_path))
    status, job = post(f"{url}/api/predict", "chest.zip", archive.read_bytes())
    assert status == 200, job
    assert job["report"]["case"] == "chest"
    series = load_series(tmp_path / "export" / "chest")
    lesions = nib.load(download(url, job["links"]["lesions"], tmp_path / "l.nii.gz"))
    assert lesions.shape == series.shape
    np.testing.assert_allclose(lesions.affine, series.affine, atol=1e-4)
    seg = pydicom.dcmread(download(url, job["links"]["dicom_seg"], tmp_path / "seg.dcm"))
    assert seg.Modality == "SEG"
    assert {item.ReferencedSOPInstanceUID for item in seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence} \
        <= {pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID for p in paths}
