"""Shared fixtures and helpers: tiny synthetic volumes in several orientations, the real-data folder,
running the CLI in-process, and the good inputs, slice file and run folder that tests damage."""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import nibabel as nib  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

from slice2d.cli import app  # noqa: E402
from slice2d.runs import SHIPPED  # noqa: E402

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
CT_SAMPLES = SHARED / "ct-samples"


def _rotation(z_deg: float, x_deg: float) -> np.ndarray:
    z, x = np.radians(z_deg), np.radians(x_deg)
    rz = np.array([[np.cos(z), -np.sin(z), 0], [np.sin(z), np.cos(z), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(x), -np.sin(x)], [0, np.sin(x), np.cos(x)]])
    return rz @ rx


def make_affine(kind: str, spacing=(0.8, 1.1, 3.3)) -> np.ndarray:
    """RAS, LPS, or oblique (rotated 25 degrees about z and 10 about x) voxel -> world matrices."""
    aff = np.eye(4)
    if kind == "RAS":
        aff[:3, :3] = np.diag(spacing)
    elif kind == "LPS":
        aff[:3, :3] = np.diag([-spacing[0], -spacing[1], spacing[2]])
    elif kind == "oblique":
        aff[:3, :3] = _rotation(25, 10) @ np.diag(spacing)
    elif kind == "PIL":  # axes permuted: the axial direction is the second array axis
        aff[:3, :3] = np.array([[0, 0, -spacing[2]], [-spacing[0], 0, 0], [0, -spacing[1], 0]], dtype=float)
    else:
        raise ValueError(kind)
    aff[:3, 3] = [-100.0, 80.0, -250.0]
    return aff


def blob_labels(shape, rng: np.random.Generator, n_blobs: int = 6, values=(1, 2)) -> np.ndarray:
    """Random ellipsoid blobs with label values from ``values``; some axial slices stay empty."""
    labels = np.zeros(shape, dtype=np.uint8)
    grid = np.ogrid[tuple(slice(0, s) for s in shape)]
    for i in range(n_blobs):
        centre = [rng.uniform(0.2, 0.8) * s for s in shape]
        radius = [max(1.0, rng.uniform(0.05, 0.2) * s) for s in shape]
        inside = sum(((g - c) / r) ** 2 for g, c, r in zip(grid, centre, radius, strict=True)) <= 1
        labels[inside] = values[i % len(values)]
    return labels


def write_case(folder: Path, name: str, shape, affine, seed: int = 0) -> tuple[Path, Path]:
    """An HU image (air, soft tissue, brighter blobs) and its label map, both written as NIfTI."""
    rng = np.random.default_rng(seed)
    labels = blob_labels(shape, rng)
    image = np.full(shape, -1000.0, dtype=np.float32)
    image[tuple(slice(s // 8, s - s // 8) for s in shape)] = -800.0
    image[labels == 1] = -500.0
    image[labels == 2] = 20.0
    image += rng.normal(0, 20, shape).astype(np.float32)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    (folder / "labels").mkdir(parents=True, exist_ok=True)
    img_path, lab_path = folder / "images" / f"{name}.nii.gz", folder / "labels" / f"{name}.nii.gz"
    nib.save(nib.Nifti1Image(image, affine), img_path)
    nib.save(nib.Nifti1Image(labels, affine), lab_path)
    return img_path, lab_path


@pytest.fixture
def cases_dir(tmp_path: Path) -> Path:
    """Four small cases of odd sizes in RAS, LPS, oblique and permuted orientations."""
    specs = [("ras", (37, 53, 11), "RAS"), ("lps", (45, 31, 9), "LPS"), ("oblique", (29, 41, 13), "oblique"),
             ("pil", (23, 17, 33), "PIL")]
    for i, (name, shape, kind) in enumerate(specs):
        # PIL puts array axes 0 and 2 in-plane: give them similar spacing so that no slice axis is
        # shrunk (shrinking is lossy, see test_shrinking_loses_only_fine_detail)
        spacing = (1.1, 3.3, 0.9) if kind == "PIL" else (0.8, 1.1, 3.3)
        write_case(tmp_path / "data", name, shape, make_affine(kind, spacing), seed=i)
    return tmp_path / "data"


def bench_module(name: str):
    """``bench/<name>.py`` loaded as a module (bench/ is scripts, not a package); bench/ goes on the
    import path, as when a script runs, for the scripts it imports."""
    import importlib.util
    import sys

    bench = Path(__file__).resolve().parents[1] / "bench"
    if str(bench) not in sys.path:
        sys.path.append(str(bench))
    spec = importlib.util.spec_from_file_location(name, bench / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def need_samples() -> Path:
    if not CT_SAMPLES.is_dir():
        pytest.skip(f"real CT samples not found at {CT_SAMPLES} (../shared/data is absent outside the dev setup)")
    return CT_SAMPLES


runner = CliRunner()


def invoke(*args: str):
    """Run ``slice2d ARGS...`` in-process; paths may be given as ``Path``."""
    return runner.invoke(app, [str(a) for a in args])


def assert_user_error(result, *fragments: str) -> None:
    """Exit status 1 with exactly one ``error: ...`` line on stderr holding every fragment, no traceback."""
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    out = result.stderr.strip()
    assert out.startswith("error: "), out
    assert len(out.splitlines()) == 1, out
    for fragment in fragments:
        assert fragment in out, (fragment, out)


def no_output(folder: Path) -> bool:
    """True when ``folder`` holds no files at all (missing or empty, hidden partial files included)."""
    return not folder.exists() or not any(p.is_file() for p in folder.rglob("*"))


def digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def good(tmp_path: Path) -> Path:
    """Three small cases (LPS, RAS, LPS): good/images and good/labels."""
    for i, kind in enumerate(("LPS", "RAS", "LPS")):
        write_case(tmp_path / "good", f"case{i}", (24, 26, 8), make_affine(kind), seed=i)
    return tmp_path / "good"


@pytest.fixture
def slices(good: Path, tmp_path: Path) -> Path:
    """``good`` prepared into a slice file with the demo config."""
    out = tmp_path / "s.h5"
    result = invoke("prepare", "--images", good / "images", "--labels", good / "labels", "--out", out,
                    "--config", "demo", "-q")
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture
def run_copy(tmp_path: Path) -> Path:
    """A copy of the shipped lesion run folder, to damage."""
    dst = tmp_path / "run"
    shutil.copytree(SHIPPED / "lesions", dst)
    return dst


@contextlib.contextmanager
def web_server(settings) -> Iterator[tuple[str, object]]:
    """``slice2d serve``'s app (``slice2d.web.jobs.Settings``) on a free loopback port, in a
    background thread; yields its base URL and its ``JobStore``. Skips without the web extra."""
    pytest.importorskip("fastapi", reason="the web extra is not installed (pip install -e '.[web]')")
    import uvicorn

    from slice2d.web.app import create_app

    app = create_app(settings)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        if not thread.is_alive():
            raise RuntimeError("the web app did not start")
        time.sleep(0.05)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}", app.state.store
    finally:
        server.should_exit = True
        thread.join()
