"""The models shipped in checkpoints/: they load in safe mode, segment real slices they were not
trained on, and are what `slice2d predict` uses when no --model is given."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
from conftest import SHARED, need_samples
from test_cli import invoke

from slice2d.dataset import remap_labels, split_lungs_by_side
from slice2d.images import read_label_slice, read_slice, slice_geometry
from slice2d.predict import load_run, predict_array, shipped_model

# floors below what the shipped models scored here (measured: lesion 0.62 mean per-slice Dice on
# the 24 slices of its validation patients at its threshold 0.1; 0.52 at 0.5)
FLOORS = {"lesions": {"lesion": 0.58}, "lungs": {"right_lung": 0.9, "left_lung": 0.9}}


@pytest.mark.parametrize("task", ["lesions", "lungs"])
def test_shipped_model_segments_its_validation_slices(task):
    if not (SHARED / "covid-ct-slices").is_dir():
        pytest.skip(f"real slices not found at {SHARED}")
    run = load_run(shipped_model(task))           # safe_mode=True inside
    assert run.cfg.data.task == task
    val = json.loads((run.path / "splits.json").read_text())["val"]
    folder = SHARED / "covid-ct-slices"
    names = sorted(c for c in val if (folder / "images" / f"{c}.png").is_file())[::10][:25]
    assert len(names) >= 10
    labels_dir = folder / ("lungs" if task == "lungs" else "infection")
    scores = {c: [] for c in FLOORS[task]}
    for name in names:
        image = read_slice(folder / "images" / f"{name}.png")
        ref = remap_labels(read_label_slice(labels_dir / f"{name}.png"), run.cfg.data, name)
        if run.cfg.data.split_lungs:
            ref = split_lungs_by_side(ref[:, :, None])[:, :, 0]
        pred = predict_array(run, image[:, :, None], slice_geometry(image.shape), batch_size=1, kind="uint8")[0][:, :, 0]
        for cls in scores:
            c = run.cfg.data.classes.index(cls)
            total = np.count_nonzero(pred == c) + np.count_nonzero(ref == c)
            scores[cls].append(1.0 if total == 0 else 2 * np.count_nonzero((pred == c) & (ref == c)) / total)
    for cls, floor in FLOORS[task].items():
        assert np.mean(scores[cls]) >= floor, (cls, np.mean(scores[cls]))


@pytest.mark.slow
def test_predict_without_model_on_a_real_scan(tmp_path):
    samples = need_samples()
    name = "cmb-crc-chest-ct.nii.gz"
    result = invoke("predict", samples / name, "--out", tmp_path, "-q")
    assert result.exit_code == 0, result.output
    src = nib.load(samples / name)
    for sub in ("", "lungs/"):
        out = nib.load(tmp_path / sub / name)
        assert out.shape == src.shape and np.allclose(out.affine, src.affine)
    report = json.loads((tmp_path / "severity" / "cmb-crc-chest-ct.json").read_text())
    assert 3000 < report["lung_ml"] < 8000, report["lung_ml"]   # plausible adult lungs

