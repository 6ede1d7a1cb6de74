"""Reliability: every bad input gives one clear line and leaves nothing behind; outputs that
cannot be written, a full disk, interrupted and killed runs lose nothing.

Bad NIfTI inputs to `prepare` are in test_cli.py, damaged run folders in test_runs.py and damaged
slice files in test_dataset.py; this module covers the rest.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from conftest import assert_user_error, digest, invoke, make_affine, no_output, write_case
from PIL import Image

from slice2d.synth import write_phantoms

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def scans(tmp_path: Path) -> Path:
    """Two small phantom chest CTs (with lungs: a scan without lungs is refused by `predict`)."""
    write_phantoms(tmp_path / "ph", cases=2, shape=(48, 48, 16), spacing=(7.0, 7.0, 13.0), seed=1)
    return tmp_path / "ph" / "images"


# ---- inputs of the wrong kind ---------------------------------------------------------------

def test_duplicate_case_names_are_refused(good, tmp_path):
    img = nib.load(good / "images" / "case0.nii.gz")
    nib.save(img, good / "images" / "case0.nii")  # the same case twice, .nii and .nii.gz
    out = tmp_path / "s.h5"
    assert_user_error(invoke("prepare", "--images", good / "images", "--labels", good / "labels", "--out", out),
                      "appear twice", "case0")
    assert_user_error(invoke("predict", good / "images", "--out", tmp_path / "o"), "appear twice")
    assert not out.exists() and no_output(tmp_path / "o")


def test_rgb_slice_images_are_refused(tmp_path):
    folder = tmp_path / "pngs"
    folder.mkdir()
    grey = np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8)
    Image.fromarray(grey).save(folder / "s1.png")
    rgb = np.stack([grey, grey // 2, grey], axis=-1)
    Image.fromarray(rgb).save(folder / "s2.png")
    assert_user_error(invoke("predict", folder, "--out", tmp_path / "o"), "s2.png", "colour image")
    assert no_output(tmp_path / "o")


def test_unreadable_slice_image_is_refused(tmp_path):
    folder = tmp_path / "pngs"
    folder.mkdir()
    Image.fromarray(np.zeros((64, 64), np.uint8)).save(folder / "s1.png")
    (folder / "s2.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)  # PNG magic, then nothing usable
    assert_user_error(invoke("predict", folder, "--out", tmp_path / "o"), "s2.png", "cannot be read as an image")
    assert no_output(tmp_path / "o")


# ---- outputs that cannot be written -------------------------------------------------------

def test_output_path_not_writable(good, slices, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("in the way")
    assert_user_error(invoke("prepare", "--images", good / "images", "--labels", good / "labels",
                             "--out", blocker / "s.h5", "--config", "demo"), "cannot write", "a file is in the way")
    assert_user_error(invoke("predict", good / "images", "--out", blocker / "o"), "cannot write")
    assert_user_error(invoke("train", slices, "--out", blocker / "run", "--config", "demo", "--epochs", "1"),
                      "cannot write")
    assert_user_error(invoke("evaluate", "--pred", good / "labels", "--ref", good / "labels", "--out", blocker / "e"),
                      "cannot write")
    assert blocker.read_text() == "in the way"


def _full_disk_after(nbytes: int):
    """A stand-in for ``io.write_nifti`` that writes ``nbytes`` of the file, then fails as a full disk does."""
    def save(img, filename, gz):
        Path(filename).write_bytes(b"\0" * nbytes)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(filename))
    return save


def test_full_disk_during_predict_leaves_nothing(scans, tmp_path, monkeypatch):
    import slice2d.io

    before = digest(scans)
    monkeypatch.setattr(slice2d.io, "write_nifti", _full_disk_after(1000))
    result = invoke("predict", scans, "--out", tmp_path / "o", "-q")
    assert_user_error(result, "no space left on the device")
    assert no_output(tmp_path / "o") or not any(p.name.endswith(".nii.gz") for p in (tmp_path / "o").rglob("*"))
    assert not list((tmp_path / "o").rglob(".*partial*"))
    assert digest(scans) == before


def test_full_disk_during_prepare_leaves_nothing(good, tmp_path, monkeypatch):
    import slice2d.dataset

    original = slice2d.dataset._write_case
    calls = []

    def write_then_fail(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:  # the second case hits a full disk, as h5py reports it
            raise OSError("Can't synchronously write data (file write failed: errno = 28, "
                          "error message = 'No space left on device')")
        return original(*args, **kwargs)

    monkeypatch.setattr(slice2d.dataset, "_write_case", write_then_fail)
    out = tmp_path / "s.h5"
    result = invoke("prepare", "--images", good / "images", "--labels", good / "labels", "--out", out, "-q")
    assert_user_error(result, "s.h5", "no space left on the device")
    assert not out.exists() and not list(tmp_path.glob(".*partial*"))


# ---- interruptions --------------------------------------------------------------------------

def test_interrupted_predict_leaves_no_file_that_looks_complete(good, tmp_path, monkeypatch):
    """Ctrl-C while a mask is being written: exit 130, the half-written file is gone, inputs untouched."""
    import slice2d.io

    real_write = slice2d.io.write_nifti
    written = []

    def write_then_interrupt(img, filename, gz):
        if written:  # the second file: half written when the user presses Ctrl-C
            Path(filename).write_bytes(b"\0" * 100)
            raise KeyboardInterrupt
        written.append(filename)
        real_write(img, filename, gz)

    monkeypatch.setattr(slice2d.io, "write_nifti", write_then_interrupt)
    before = digest(good)
    result = invoke("predict", good / "images", "--out", tmp_path / "o", "--no-severity", "-q")
    assert result.exit_code == 130
    assert "no partial output" in result.stderr
    files = sorted(p for p in (tmp_path / "o").rglob("*") if p.is_file())
    # the case finished before the interrupt, and the record of what wrote it (for --resume)
    assert [p.name for p in files] == ["case0.nii.gz", "predict.json"]
    assert nib.load(files[0]).shape == nib.load(good / "images" / "case0.nii.gz").shape
    assert digest(good) == before


def _slice2d(*args: str) -> subprocess.Popen:
    env = {**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1", "TF_CPP_MIN_LOG_LEVEL": "2"}
    return subprocess.Popen([sys.executable, str(REPO / "cli.py"), *map(str, args)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _wait_for(condition, proc: subprocess.Popen, timeout: float = 240.0) -> None:
    end = time.monotonic() + timeout
    while not condition():
        if proc.poll() is not None:
            raise AssertionError(f"process ended ({proc.returncode}) before the moment to kill it:\n{proc.stdout.read()}")
        if time.monotonic() > end:
            proc.kill()
            raise AssertionError("timed out waiting for the moment to kill")
        time.sleep(0.05)


@pytest.mark.slow
def test_killed_predict_leaves_only_complete_files(tmp_path):
    """SIGKILL (no clean-up possible) in the middle of a folder: every file with a final name is whole."""
    for i in range(6):
        write_case(tmp_path / "in", f"case{i}", (160, 160, 40), make_affine("LPS"), seed=i)
    images = tmp_path / "in" / "images"
    before = digest(images)
    out = tmp_path / "o"
    proc = _slice2d("predict", images, "--out", out, "--no-severity", "-q")
    _wait_for(lambda: out.is_dir() and any(p.name.endswith(".nii.gz") for p in out.iterdir()), proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    finals = [p for p in out.iterdir() if p.is_file() and not p.name.startswith(".")]
    assert 1 <= len(finals) < 6, "killed too late to test anything"
    for path in finals:
        img = nib.load(path)
        assert img.shape == (160, 160, 40)
        assert np.asarray(img.dataobj).shape == (160, 160, 40)   # the whole voxel array reads
    assert digest(images) == before


@pytest.mark.slow
def test_killed_training_resumes_with_same_splits_and_history(tmp_path):
    for i in range(8):
        write_case(tmp_path / "d", f"case{i}", (64, 64, 40), make_affine("RAS"), seed=i)
    slices = tmp_path / "s.h5"
    result = invoke("prepare", "--images", tmp_path / "d" / "images", "--labels", tmp_path / "d" / "labels",
                    "--out", slices, "--config", "demo", "-q")
    assert result.exit_code == 0, result.output
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text("model: {depth: 2, base_filters: 4}\ntrain: {epochs: 6, batch_size: 4, early_stopping_patience: 10}\n")
    run = tmp_path / "run"
    history = run / "history.csv"

    def epochs_done() -> list[int]:
        rows = history.read_text().splitlines()[1:] if history.exists() else []
        return [int(float(r.split(",")[0])) for r in rows]

    proc = _slice2d("train", slices, "--out", run, "--config", cfg, "-q")
    _wait_for(lambda: len(epochs_done()) >= 2, proc)
    time.sleep(0.5)  # into the next epoch
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    done = epochs_done()
    assert 2 <= len(done) < 6, done
    splits = (run / "splits.json").read_text()
    # one backup, of the last epoch logged, or of the one before when the kill fell between writing
    # an epoch's history row and its backup (that epoch then runs again)
    backups = [p.name for p in (run / "backup").glob("epoch-*.weights.h5")]
    assert len(backups) == 1 and backups[0] in {f"epoch-{n:04d}.weights.h5" for n in (len(done), len(done) - 1)}, backups
    backed_up = int(backups[0][6:10])
    rows_before = history.read_text().splitlines()[1:backed_up + 1]

    resumed = _slice2d("train", slices, "--out", run, "--config", cfg, "--resume", "-q")
    output = resumed.communicate(timeout=600)[0]
    assert resumed.returncode == 0, output
    assert (run / "splits.json").read_text() == splits
    assert epochs_done() == list(range(6))            # continued, each epoch once
    assert history.read_text().splitlines()[1:backed_up + 1] == rows_before  # backed-up epochs kept as they were
    assert (run / "model.keras").is_file() and json.loads((run / "run.json").read_text())["format"] == "slice2d-run"
