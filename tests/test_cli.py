"""The CLI: instant help, and one clear line with a non-zero exit for each kind of bad input."""

from __future__ import annotations

import gzip
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from conftest import assert_user_error, invoke, make_affine, write_case


def test_help_does_not_import_tensorflow():
    code = ("import sys; from typer.testing import CliRunner; from slice2d.cli import app; "
            "r = CliRunner().invoke(app, ['--help']); assert r.exit_code == 0, r.output; "
            "assert 'predict' in r.output; print('tensorflow' in sys.modules, 'keras' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False False"


def test_lung_source_choices_are_anatomy_s():
    """The CLI spells out --lung-source's choices (anatomy is not imported for --help): no drift."""
    from slice2d.anatomy import LUNG_SOURCES
    from slice2d.cli import LungSource

    assert [source.value for source in LungSource] == list(LUNG_SOURCES)


def test_entry_point_keeps_exit_status_and_output(tmp_path):
    """``cli.run`` ends the process without the interpreter's teardown: status and output must survive."""
    cli = Path(__file__).resolve().parent.parent / "cli.py"
    missing = subprocess.run([sys.executable, str(cli), "predict", str(tmp_path / "nothing.nii.gz"),
                              "--out", str(tmp_path / "o")], capture_output=True, text=True)
    assert missing.returncode == 1
    assert missing.stderr.splitlines() == [f"error: {tmp_path / 'nothing.nii.gz'}: image file not found; check the path"]
    assert not (tmp_path / "o").exists()
    usage = subprocess.run([sys.executable, str(cli), "predict", "x", "--out", "o", "--threshold", "5"],
                           capture_output=True, text=True)
    assert usage.returncode == 2 and "--threshold" in usage.stderr
    helped = subprocess.run([sys.executable, str(cli), "--help"], capture_output=True, text=True)
    assert helped.returncode == 0
    assert "predict" in helped.stdout and helped.stdout.rstrip().endswith("╯")  # the whole help, flushed


def test_error_line_comes_without_tensorflow_notices(tmp_path):
    """A case that fails while TensorFlow loads in the background: stderr is the error line alone,
    without TensorFlow's native start-up notices (which ignore TF_CPP_MIN_LOG_LEVEL)."""
    cli = Path(__file__).resolve().parent.parent / "cli.py"
    path = tmp_path / "soft.nii.gz"
    nib.save(nib.Nifti1Image(np.full((48, 48, 12), 40, np.int16), make_affine("RAS")), path)
    env = {k: v for k, v in __import__("os").environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    failed = subprocess.run([sys.executable, str(cli), "predict", str(path), "--out", str(tmp_path / "o"), "-q"],
                            capture_output=True, text=True, env=env)
    assert failed.returncode == 1
    lines = failed.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {path}: no lungs found"), failed.stderr


def test_stderr_filter_drops_notices_only():
    """The filter passes every other byte on, in order, from any thread, partial lines included."""
    code = "\n".join([
        "import os, threading",
        "os.environ['TF_CPP_MIN_LOG_LEVEL'] = '2'",
        "from slice2d import tflog",
        "tflog._active = tflog._Filter()",
        r"os.write(2, b'WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n')",
        r"os.write(2, b'first\nI0000 00:00:1796545570.431024   16539 port.cc:153] oneDNN custom operations are on.\n')",
        r"os.write(2, b'W0000 00:00:1796545570.431024   16539 some_file.cc:12] a warning\nE0000 00:00:17.1 9 x.cc:1] kept\n')",
        r"thread = threading.Thread(target=os.write, args=(2, b'from a thread\n'))",
        "thread.start(); thread.join()",
        r"os.write(2, b'\rprogress 3/9')",
        "tflog.release()",
        r"os.write(2, b' after\n')",
    ])
    out = subprocess.run([sys.executable, "-c", code], capture_output=True)
    assert out.returncode == 0, out.stderr
    assert out.stderr == b"first\nE0000 00:00:17.1 9 x.cc:1] kept\nfrom a thread\n\rprogress 3/9 after\n"


def test_stderr_filter_keeps_everything_at_level_0():
    from slice2d.tflog import is_notice

    notice = b"I0000 00:00:1796545570.431024   16539 port.cc:153] oneDNN custom operations are on."
    assert not is_notice(notice, 0) and is_notice(notice, 1)
    assert not is_notice(b"error: x.nii.gz: image file not found; check the path", 3)
    assert not is_notice(b"I0000 is not a log line", 3)


@pytest.fixture
def good(tmp_path: Path) -> Path:
    write_case(tmp_path / "good", "a", (20, 22, 6), make_affine("LPS"), seed=0)
    write_case(tmp_path / "good", "b", (20, 22, 6), make_affine("RAS"), seed=1)
    return tmp_path / "good"


def _prepare(images: Path, labels: Path, out: Path):
    return invoke("prepare", "--images", images, "--labels", labels, "--out", out, "--config", "lesions3", "-q")


def test_prepare_ok_writes_file(good, tmp_path):
    result = _prepare(good / "images", good / "labels", tmp_path / "s.h5")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "s.h5").is_file()
    assert not list(tmp_path.glob(".*partial*"))


def _corrupt(folder: Path, name: str, kind: str) -> None:
    path = folder / f"{name}.nii.gz"
    aff = make_affine("LPS")
    if kind == "2d":
        nib.save(nib.Nifti1Image(np.zeros((20, 22), np.float32), aff), path)
    elif kind == "4d":
        nib.save(nib.Nifti1Image(np.zeros((20, 22, 6, 3), np.float32), aff), path)
    elif kind == "not-nifti":
        path.write_bytes(b"this is not a NIfTI file at all" * 20)
    elif kind == "truncated":
        data = (folder.parent / "images" / f"{name}.nii.gz").read_bytes() if folder.name == "labels" else path.read_bytes()
        path.write_bytes(data[: len(data) // 3])
    elif kind == "shape":
        nib.save(nib.Nifti1Image(np.zeros((20, 21, 6), np.uint8), aff), path)
    elif kind == "affine":
        nib.save(nib.Nifti1Image(np.zeros((20, 22, 6), np.uint8), make_affine("RAS")), path)
    elif kind == "not-hu":
        nib.save(nib.Nifti1Image(np.random.default_rng(0).integers(0, 256, (20, 22, 6)).astype(np.float32), aff), path)
    elif kind == "nan":
        data = np.zeros((20, 22, 6), np.float32) - 1000
        data[3, 3, 3] = np.nan
        nib.save(nib.Nifti1Image(data, aff), path)
    elif kind == "inf":
        data = np.zeros((20, 22, 6), np.float32) - 1000
        data[3, 3, 3] = np.inf
        nib.save(nib.Nifti1Image(data, aff), path)
    elif kind == "wrong-magic":  # a NIfTI whose header magic is damaged
        raw = bytearray(nib.Nifti1Image(np.zeros((20, 22, 6), np.float32) - 1000, aff).to_bytes())
        raw[344:348] = b"XXXX"
        path.write_bytes(gzip.compress(bytes(raw)))
    elif kind == "rgb":
        nib.save(nib.Nifti1Image(np.zeros((20, 22, 6), dtype=[("R", "u1"), ("G", "u1"), ("B", "u1")]), aff), path)
    elif kind == "bad-labels":
        nib.save(nib.Nifti1Image(np.full((20, 22, 6), 7, np.uint8), aff), path)


@pytest.mark.parametrize("where, kind, message", [
    ("images", "2d", "2 dimensions"),
    ("images", "4d", "4 dimensions"),
    ("images", "not-nifti", "cannot be read as NIfTI"),
    ("images", "truncated", "a.nii.gz"),
    ("labels", "shape", "differs from a.nii.gz"),
    ("labels", "affine", "affine differs"),
    ("images", "not-hu", "Hounsfield"),
    ("images", "nan", "NaN"),
    ("images", "inf", "Inf"),
    ("images", "wrong-magic", "cannot be read as NIfTI"),
    ("images", "rgb", "RGB (colour) volume"),
    ("labels", "bad-labels", "unexpected label values [7]"),
])
def test_prepare_bad_input(good, tmp_path, where, kind, message):
    _corrupt(good / where, "a", kind)
    out = tmp_path / "s.h5"
    result = _prepare(good / "images", good / "labels", out)
    assert_user_error(result, message)
    assert not out.exists() and not list(tmp_path.glob(".*partial*"))


def test_prepare_missing_and_empty_folders(good, tmp_path):
    assert_user_error(_prepare(tmp_path / "nope", good / "labels", tmp_path / "s.h5"), "folder not found")
    (tmp_path / "empty").mkdir()
    assert_user_error(_prepare(tmp_path / "empty", good / "labels", tmp_path / "s.h5"), "no .nii, .nii.gz, .nrrd")
    (good / "labels" / "b.nii.gz").unlink()
    assert_user_error(_prepare(good / "images", good / "labels", tmp_path / "s.h5"), "no label map for cases ['b']")


def test_bad_config_names_the_field(good, tmp_path):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("data:\n  size: 8\n")
    result = invoke("prepare", "--images", good / "images", "--labels", good / "labels", "--out", tmp_path / "s.h5",
                    "--config", cfg)
    assert_user_error(result, "data.size")
    assert_user_error(invoke("prepare", "--images", good / "images", "--labels", good / "labels",
                             "--out", tmp_path / "s.h5", "--config", "no-such-preset"), "config file not found")


def test_preset_name_wins_over_a_folder_of_that_name(tmp_path, monkeypatch):
    from slice2d.config import load_config, preset_path

    monkeypatch.chdir(tmp_path)
    (tmp_path / "demo").mkdir()          # what `slice2d demo` creates before it loads the preset
    assert load_config("demo") == load_config(preset_path("demo"))
    assert load_config("demo") != load_config(None)


def test_train_and_predict_bad_input(good, tmp_path):
    not_h5 = tmp_path / "x.h5"
    not_h5.write_bytes(b"nope")
    assert_user_error(invoke("train", not_h5, "--out", tmp_path / "run"), "not a readable HDF5")
    assert_user_error(invoke("train", tmp_path / "missing.h5", "--out", tmp_path / "run"), "not found")
    assert_user_error(invoke("predict", good / "images" / "a.nii.gz", "--model", tmp_path / "norun",
                             "--out", tmp_path / "o"), "run folder not found")
    (tmp_path / "run").mkdir()
    assert_user_error(invoke("predict", good / "images" / "a.nii.gz", "--model", tmp_path / "run",
                             "--out", tmp_path / "o"), "lacks model.keras")
    assert_user_error(invoke("predict", tmp_path / "nothing.nii.gz", "--model", tmp_path / "run",
                             "--out", tmp_path / "o"), "not found")
    assert not (tmp_path / "o").exists()
