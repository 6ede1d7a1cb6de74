"""Reliability: every bad input gives one clear line and leaves nothing behind; interrupted and
killed runs lose nothing; damaged or foreign run folders and slice files are refused.

Bad NIfTI inputs to `prepare` are in test_cli.py; this module covers the rest of issue 6.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import nibabel as nib
import numpy as np
import pytest
from conftest import assert_user_error, invoke, make_affine, write_case
from PIL import Image

from slice2d.predict import SHIPPED
from slice2d.synth import write_phantoms

REPO = Path(__file__).resolve().parents[1]


def no_output(folder: Path) -> bool:
    """True when ``folder`` holds no files at all (missing or empty, hidden partial files included)."""
    return not folder.exists() or not any(p.is_file() for p in folder.rglob("*"))


def digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def good(tmp_path: Path) -> Path:
    for i, kind in enumerate(("LPS", "RAS", "LPS")):
        write_case(tmp_path / "good", f"case{i}", (24, 26, 8), make_affine(kind), seed=i)
    return tmp_path / "good"


@pytest.fixture
def scans(tmp_path: Path) -> Path:
    """Two small phantom chest CTs (with lungs: a scan without lungs is refused by `predict`)."""
    write_phantoms(tmp_path / "ph", cases=2, shape=(48, 48, 16), spacing=(7.0, 7.0, 13.0), seed=1)
    return tmp_path / "ph" / "images"


@pytest.fixture
def slices(good: Path, tmp_path: Path) -> Path:
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


# ---- run folders --------------------------------------------------------------------------

@pytest.mark.parametrize("damage, message", [
    ("no-stamp", "lacks run.json"),
    ("other-version", "run format 99"),
    ("foreign-stamp", "not a slice2d run folder"),
    ("no-config", "lacks config.yaml"),
    ("bad-config", "incompatible slice2d version"),
    ("truncated-model", "cannot be loaded"),
])
def test_damaged_or_foreign_run_folders_are_refused(good, run_copy, tmp_path, damage, message):
    if damage == "no-stamp":
        (run_copy / "run.json").unlink()
    elif damage == "other-version":
        stamp = json.loads((run_copy / "run.json").read_text())
        (run_copy / "run.json").write_text(json.dumps({**stamp, "format_version": 99, "slice2d": "9.0"}))
    elif damage == "foreign-stamp":
        (run_copy / "run.json").write_text(json.dumps({"format": "something-else"}))
    elif damage == "no-config":
        (run_copy / "config.yaml").unlink()
    elif damage == "bad-config":
        (run_copy / "config.yaml").write_text("model:\n  kernel: 5\n")
    elif damage == "truncated-model":
        data = (run_copy / "model.keras").read_bytes()
        (run_copy / "model.keras").write_bytes(data[: len(data) // 2])
    before = digest(good)
    result = invoke("predict", good / "images" / "case0.nii.gz", "--model", run_copy, "--out", tmp_path / "o")
    assert_user_error(result, message)
    assert no_output(tmp_path / "o")
    assert digest(good) == before


def test_resume_refuses_a_run_of_another_version(slices, tmp_path):
    run = tmp_path / "r"
    run.mkdir()
    (run / "config.yaml").write_text("{}\n")
    (run / "splits.json").write_text('{"train": [], "val": []}')
    (run / "run.json").write_text(json.dumps({"format": "slice2d-run", "format_version": 0, "slice2d": "0.0.1"}))
    assert_user_error(invoke("train", slices, "--out", run, "--resume"), "run format 0")


# ---- slice files (HDF5) -------------------------------------------------------------------

@pytest.mark.parametrize("damage, message", [
    ("truncated", "not a readable HDF5 file"),
    ("wrong-magic", "not a readable HDF5 file"),
    ("foreign", "not a slice2d slice file"),
    ("other-version", "slice file format 7"),
    ("missing-dataset", "is incomplete"),
])
def test_damaged_or_foreign_slice_files_are_refused(slices, tmp_path, damage, message):
    path = tmp_path / "bad.h5"
    if damage == "truncated":
        data = slices.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif damage == "wrong-magic":
        data = bytearray(slices.read_bytes())
        data[:8] = b"NOTHDF5!"
        path.write_bytes(bytes(data))
    elif damage == "foreign":
        with h5py.File(path, "w") as h5:
            h5["images"] = np.zeros((4, 8, 8))
    else:
        shutil.copy(slices, path)
        with h5py.File(path, "a") as h5:
            if damage == "other-version":
                h5.attrs["format_version"] = 7
            else:
                del h5["cases"][sorted(h5["cases"])[0]]["label"]
    assert_user_error(invoke("train", path, "--out", tmp_path / "run"), message, "bad.h5")
    assert no_output(tmp_path / "run")


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
    """A stand-in for nibabel.save that writes ``nbytes`` of the file, then fails as a full disk does."""
    def save(img, filename):
        Path(filename).write_bytes(b"\0" * nbytes)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(filename))
    return save


def test_full_disk_during_predict_leaves_nothing(scans, tmp_path, monkeypatch):
    import slice2d.io

    before = digest(scans)
    monkeypatch.setattr(slice2d.io.nib, "save", _full_disk_after(1000))
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

    real_save = nib.save
    written = []

    def save_then_interrupt(img, filename):
        if written:  # the second file: half written when the user presses Ctrl-C
            Path(filename).write_bytes(b"\0" * 100)
            raise KeyboardInterrupt
        written.append(filename)
        real_save(img, filename)

    monkeypatch.setattr(slice2d.io.nib, "save", save_then_interrupt)
    before = digest(good)
    result = invoke("predict", good / "images", "--out", tmp_path / "o", "--no-severity", "-q")
    assert result.exit_code == 130
    assert "no partial output" in result.stderr
    files = [p for p in (tmp_path / "o").rglob("*") if p.is_file()]
    assert [p.name for p in files] == ["case0.nii.gz"]          # the one finished before the interrupt
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
    assert [p.name for p in (run / "backup").glob("epoch-*.weights.h5")] == [f"epoch-{len(done):04d}.weights.h5"]
    rows_before = history.read_text().splitlines()[1:]

    resumed = _slice2d("train", slices, "--out", run, "--config", cfg, "--resume", "-q")
    output = resumed.communicate(timeout=600)[0]
    assert resumed.returncode == 0, output
    assert (run / "splits.json").read_text() == splits
    assert epochs_done() == list(range(6))            # continued, each epoch once
    assert history.read_text().splitlines()[1:len(done) + 1] == rows_before  # earlier epochs kept as they were
    assert (run / "model.keras").is_file() and json.loads((run / "run.json").read_text())["format"] == "slice2d-run"


def test_a_model_file_carrying_code_is_refused(run_copy, tmp_path):
    """Safe mode: a .keras file with a Lambda layer (arbitrary Python) is refused, its code never runs."""
    import keras

    marker = tmp_path / "code-ran"
    inputs = keras.Input((128, 128, 1))
    path = str(marker)
    evil = keras.layers.Lambda(lambda x: (open(path, "w").close(), x)[1])(inputs)
    outputs = keras.layers.Conv2D(2, 1, activation="softmax")(evil)
    keras.Model(inputs, outputs).save(run_copy / "model.keras")
    marker.unlink(missing_ok=True)
    from slice2d.io import InputError
    from slice2d.predict import load_run

    with pytest.raises(InputError, match="cannot be loaded"):
        load_run(run_copy)
    assert not marker.exists()


def test_a_mixed_precision_run_loads_as_float32_on_a_cpu(run_copy):
    """A model trained with mixed precision on a GPU predicts on a CPU in float32, with its own weights."""
    import keras

    from slice2d.model import build_unet
    from slice2d.predict import load_run, load_trained_model, predict_slices

    shipped = load_run(SHIPPED / "lesions")
    cfg = shipped.cfg
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        mixed = build_unet(cfg.data.size, len(cfg.data.classes), cfg.model)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    mixed.set_weights(load_trained_model(SHIPPED / "lesions").get_weights())
    mixed.save(run_copy / "model.keras")
    run = load_run(run_copy)
    assert {layer.dtype_policy.name for layer in run.model.layers} == {"float32"}
    slices = np.random.default_rng(0).random((4, cfg.data.size, cfg.data.size), dtype=np.float32)
    np.testing.assert_allclose(predict_slices(run, slices, 4), predict_slices(shipped, slices, 4), atol=1e-5)


def test_batch_norms_fold_into_the_convolutions_without_changing_predictions():
    """The inference copy has no batch norm and predicts what the trained model predicts."""
    import keras

    from slice2d.config import ModelConfig
    from slice2d.model import build_unet, fold_batch_norm

    cfg = ModelConfig(depth=2, base_filters=4, residual=True)
    model = build_unet(16, 3, cfg)
    rng = np.random.default_rng(1)
    for layer in model.layers:  # trained-looking statistics, far from the identity
        if isinstance(layer, keras.layers.BatchNormalization):
            n = layer.gamma.shape[0]
            layer.set_weights([rng.uniform(0.5, 2, n), rng.normal(0, 1, n), rng.normal(0, 1, n), rng.uniform(0.1, 3, n)])
    folded = fold_batch_norm(model, 16, 3, cfg)
    assert not any(isinstance(layer, keras.layers.BatchNormalization) for layer in folded.layers)
    x = rng.random((5, 16, 16, 1), dtype=np.float32)
    expected = np.asarray(model(x, training=False))
    assert np.abs(expected - 1 / 3).max() > 0.05  # the statistics matter
    np.testing.assert_allclose(np.asarray(folded(x, training=False)), expected, atol=2e-5)


def _threshold_run(classes: tuple[str, ...], below: float | None = None, above: float | None = None):
    """A stand-in Run: class 1 wherever the windowed input is below ``below`` or above ``above``."""
    import keras

    from slice2d.config import Config, DataConfig
    from slice2d.predict import Run

    inputs = keras.Input((16, 16, 1))
    head = keras.layers.Conv2D(len(classes), 1, activation="softmax")
    model = keras.Model(inputs, head(inputs))
    kernel, bias = np.zeros((1, 1, 1, len(classes)), np.float32), np.full(len(classes), -50.0, np.float32)
    bias[0] = 0.0
    if below is not None:
        kernel[..., 1], bias[1] = -100.0, 100.0 * below  # class 1 logit > 0 where x < below
    else:
        kernel[..., 1], bias[1] = 100.0, -100.0 * above
    head.set_weights([kernel, bias])
    return Run(path=Path("."), cfg=Config(data=DataConfig(size=16, classes=classes)), loaded=model)


def test_with_lungs_first_the_lesion_model_sees_only_slices_with_lung():
    """A lung map's specks are dropped, and skipping the lesion model where that map has no lung
    changes nothing that is written (``lesions_near_lungs`` drops every lesion there anyway)."""
    import nibabel as nib

    from slice2d.io import geometry_of
    from slice2d.predict import predict_volume
    from slice2d.slicing import lesions_near_lungs

    image = np.zeros((16, 16, 8), np.int16)  # soft tissue
    image[3:13, 3:13, 2:6] = -850  # a lung block on slices 2-5
    image[14, 14, 7] = -900  # one air voxel on slice 7: a speck in the lung map
    image[5, 5, :] = image[10, 10, :] = 300  # bright "lesions" on every slice
    lungs_run = _threshold_run(("background", "right_lung", "left_lung"), below=0.15)  # HU < -790
    lesion_run = _threshold_run(("background", "lesion"), above=0.85)  # HU > 190
    geometry = geometry_of(nib.Nifti1Image(image, np.diag([1.5, 1.5, 4.0, 1.0])))
    (raw_les, _), (raw_lungs, _) = predict_volume([lesion_run, lungs_run], image, geometry)
    (les, probs), (lungs, _) = predict_volume([lesion_run, lungs_run], image, geometry, probabilities=True,
                                              lung_run=lungs_run, lung_slices_only=True)
    assert raw_lungs[14, 14, 7] == 1 and raw_les[5, 5, :].all()  # the stand-ins do what they say
    expected_lungs = raw_lungs.copy()
    expected_lungs[14, 14, 7] = 0
    np.testing.assert_array_equal(lungs, expected_lungs)
    with_lung = lungs.any(axis=(0, 1))
    np.testing.assert_array_equal(with_lung, [False, False, True, True, True, True, False, False])
    np.testing.assert_array_equal(les[:, :, with_lung], raw_les[:, :, with_lung])
    assert not les[:, :, ~with_lung].any()
    assert np.all(probs[:, :, ~with_lung, 0] == 1) and np.all(probs[:, :, ~with_lung, 1] == 0)
    np.testing.assert_array_equal(lesions_near_lungs(les, lungs, geometry), lesions_near_lungs(raw_les, lungs, geometry))


def test_small_pieces_of_a_lung_map_are_dropped_in_3d():
    from slice2d.slicing import drop_small_components, plan_slices

    geom = plan_slices(20, 20, 24)  # padded: 2 pixels each side
    probs = np.zeros((4, 24, 24, 3), np.float32)
    probs[..., 0] = 0.9
    probs[..., 1] = 0.1
    probs[:, 4:20, 4:12, 1] = 0.95  # a large right lung
    probs[1:3, 4:20, 13:20, 2] = 0.95  # a large left lung
    probs[3, 2:4, 2:4, 1] = 0.95  # touches the right lung diagonally: one piece with it
    probs[0, 21, 21, 2] = 0.95  # a speck far from both: dropped
    before = probs.copy()
    drop_small_components(probs, geom)
    np.testing.assert_array_equal(probs[0, 21, 21], [1, 0, 0])
    probs[0, 21, 21] = before[0, 21, 21]
    np.testing.assert_array_equal(probs, before)  # nothing else moved


def test_the_run_s_foreground_threshold_decides_the_labels():
    """A run's ``predict.foreground_threshold`` is applied: foreground exactly where the (resized)
    foreground probability exceeds it."""
    import nibabel as nib

    from slice2d.io import geometry_of
    from slice2d.predict import predict_volume, with_options

    soft = _threshold_run(("background", "lesion"), above=0.6)
    soft.model.layers[-1].set_weights([np.full((1, 1, 1, 2), [0.0, 8.0], np.float32), np.array([0.0, -4.8], np.float32)])
    image = np.asarray(np.random.default_rng(2).integers(-1000, 400, (20, 20, 3)), np.int16)
    geometry = geometry_of(nib.Nifti1Image(image, np.diag([1.0, 1.0, 3.0, 1.0])))
    found = {}
    for t in (0.5, 0.2):
        run = with_options(soft, t)
        (labels, probs), = predict_volume([run], image, geometry, probabilities=True)
        decided = np.abs(probs[..., 1] - t) > 1e-5
        np.testing.assert_array_equal((labels == 1)[decided], (probs[..., 1] > t)[decided])
        found[t] = labels == 1
    assert found[0.5].sum() < found[0.2].sum() and not (found[0.5] & ~found[0.2]).any()


class _SideModel:
    """A stand-in network that is not mirror-symmetric: its class-1 probability rises from the
    top-left corner, so each mirror image gives another answer."""

    def predict_on_batch(self, batch):
        n, h, w, _ = batch.shape
        ramp = np.add.outer(np.arange(h), 2 * np.arange(w)) / (h + 2 * w)
        p1 = np.clip(0.5 * batch[..., 0] + 0.5 * ramp, 0, 1)
        return np.stack([1 - p1, p1], axis=-1).astype(np.float32)


@pytest.mark.parametrize("task, vertical, axes", [("lesions", 0.5, (1, 2)), ("lungs", 0.5, (1,)),
                                                  ("lesions", 0.0, (2,)), ("lobes", 0.0, ())])
def test_mirror_averages_over_the_flips_the_labels_allow(task, vertical, axes):
    """With ``predict.mirror`` the probabilities are the mean over the slice and its mirror images
    (mirrored back): left-right only for lesions (lung and lobe labels name a side), up-down only
    for models trained with vertical flips."""
    from slice2d.config import Config
    from slice2d.predict import Run, mirror_axes, predict_slices, with_options

    cfg = Config().updated(data={"task": task, "size": 16}, train={"augment": {"vertical_flip": vertical}})
    assert mirror_axes(cfg) == axes
    run = Run(path=Path("."), cfg=cfg, loaded=_SideModel())
    slices = np.random.default_rng(0).random((5, 16, 16), dtype=np.float32)
    plain = predict_slices(run, slices, batch_size=4)
    mirrored = predict_slices(with_options(run, mirror=True), slices, batch_size=4)
    model = _SideModel()
    expected = np.mean([np.flip(model.predict_on_batch(np.flip(slices[..., None], flip)), flip)
                        for flip in ((), (1,), (2,), (1, 2)) if set(flip) <= set(axes)], axis=0)
    np.testing.assert_allclose(mirrored, expected, atol=1e-6)
    np.testing.assert_allclose(mirrored.sum(axis=-1), 1.0, atol=1e-6)
    assert np.abs(mirrored - plain).max() > 0.05 if axes else np.array_equal(mirrored, plain)
