"""The models shipped in checkpoints/: they load in safe mode, segment real slices they were not
trained on, and are what `slice2d predict` uses when no --model is given."""

from __future__ import annotations

import json
import shutil

import nibabel as nib
import numpy as np
import pytest
from conftest import SHARED, invoke, need_samples

from slice2d.config import load_config
from slice2d.dataset import remap_labels, split_lungs_by_side
from slice2d.images import read_label_slice, read_slice, slice_geometry
from slice2d.predict import load_run, predict_array
from slice2d.runs import run_config, shipped_model, unseen_cases

# floors below what the shipped models scored here (measured, mean per-slice Dice on 24-25 slices
# of the patients they never trained on, at their threshold 0.1: lesions (256x256; its test fold)
# 0.663, lesions-128 (its validation split) 0.62)
FLOORS = {"lesions": {"lesion": 0.6}, "lesions-128": {"lesion": 0.58}, "lungs": {"right_lung": 0.9, "left_lung": 0.9}}


@pytest.mark.parametrize("name", ["lesions", "lesions-128", "lungs"])
def test_shipped_model_segments_its_validation_slices(name):
    if not (SHARED / "covid-ct-slices").is_dir():
        pytest.skip(f"real slices not found at {SHARED}")
    run = load_run(shipped_model(name))           # safe_mode=True inside
    task = run.cfg.data.task
    assert task == name.split("-")[0]
    folder = SHARED / "covid-ct-slices"
    cases = sorted(c for c in unseen_cases(run.path) if (folder / "images" / f"{c}.png").is_file())[::10][:25]
    assert len(cases) >= 10
    labels_dir = folder / ("lungs" if task == "lungs" else "infection")
    scores = {c: [] for c in FLOORS[name]}
    for case in cases:
        image = read_slice(folder / "images" / f"{case}.png")
        ref = remap_labels(read_label_slice(labels_dir / f"{case}.png"), run.cfg.data, case)
        if run.cfg.data.split_lungs:
            ref = split_lungs_by_side(ref[:, :, None])[:, :, 0]
        pred = predict_array(run, image[:, :, None], slice_geometry(image.shape), batch_size=1, kind="uint8")[0][:, :, 0]
        for cls in scores:
            c = run.cfg.data.classes.index(cls)
            total = np.count_nonzero(pred == c) + np.count_nonzero(ref == c)
            scores[cls].append(1.0 if total == 0 else 2 * np.count_nonzero((pred == c) & (ref == c)) / total)
    for cls, floor in FLOORS[name].items():
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


def test_predict_with_the_faster_lesion_model_uses_the_shipped_lung_model_too(tmp_path):
    if not (SHARED / "covid-ct-slices").is_dir():
        pytest.skip(f"real slices not found at {SHARED}")
    run = shipped_model("lesions-128")
    val = unseen_cases(run)
    folder = SHARED / "covid-ct-slices"
    slices = tmp_path / "slices"
    slices.mkdir()
    # four of its validation slices with a sizeable lung (a lung tip of a few pixels says little)
    cases = [c for c in sorted(val)[::5] if (folder / "images" / f"{c}.png").is_file()
             and np.count_nonzero(read_label_slice(folder / "lungs" / f"{c}.png")) > 6000][:4]
    assert len(cases) == 4
    for case in cases:
        shutil.copy(folder / "images" / f"{case}.png", slices)
    lesions = {}
    for flag in ("--no-tta", "--tta"):  # and with test-time augmentation (mirror images averaged)
        result = invoke("predict", slices, "--model", run, "--out", tmp_path / flag, flag, "-q")
        assert result.exit_code == 0, result.output
        dices = []
        for case in cases:  # the lung maps are there (no --lungs-model given), and right
            lungs = read_label_slice(tmp_path / flag / "lungs" / f"{case}.png") > 0
            ref = read_label_slice(folder / "lungs" / f"{case}.png") > 0
            dices.append(_dice(lungs, ref))
            lesions[flag, case] = read_label_slice(tmp_path / flag / f"{case}.png") > 0
            assert lesions[flag, case].shape == ref.shape
        assert np.mean(dices) > 0.9, (flag, dices)
    # --tta reaches the model (other maps) and they still fit the infection reference
    assert any((lesions["--tta", c] != lesions["--no-tta", c]).any() for c in cases)
    tta = [_dice(lesions["--tta", c], read_label_slice(folder / "infection" / f"{c}.png") > 0) for c in cases]
    assert np.mean(tta) > 0.65, tta  # measured 0.77


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    total = np.count_nonzero(a) + np.count_nonzero(b)
    return 1.0 if total == 0 else 2 * np.count_nonzero(a & b) / total


@pytest.mark.parametrize("name, preset", [("lesions", "real-lesions"), ("lesions-128", "real-lesions"),
                                          ("lungs", "real-lungs")])
def test_shipped_model_has_its_presets_architecture(name, preset):
    # the presets name the U-Net each shipped model predicts with, whatever the package default;
    # deep supervision adds heads in training only (the shipped network keeps the top one)
    shipped = run_config(shipped_model(name)).model.model_dump(exclude={"deep_supervision"})
    assert shipped == load_config(preset).model.model_dump(exclude={"deep_supervision"})


# `slice2d predict` with the defaults on the covid-semiseg slices the shipped lesion model never
# trained on (its test fold), as stored (a quarter turn, found by the orientation detection):
# ground-glass 1 and consolidation 2 (the model's map split by density). Measured mean per-slice
# Dice 0.473 / 0.379, infection 0.655 (10 slices).
CLASS_FLOORS = {1: 0.35, 2: 0.26, "infection": 0.5}


def test_predict_writes_ground_glass_and_consolidation_on_real_slices_it_did_not_train_on(tmp_path):
    semiseg = SHARED / "covid-semiseg" / "train"
    if not semiseg.is_dir():
        pytest.skip(f"real slices not found at {SHARED}")
    cases = sorted(c for c in unseen_cases(shipped_model("lesions")) if (semiseg / "images" / f"{c}.jpg").is_file())
    assert len(cases) >= 8
    (tmp_path / "in").mkdir()
    for case in cases:
        shutil.copy(semiseg / "images" / f"{case}.jpg", tmp_path / "in")
    result = invoke("predict", tmp_path / "in", "--out", tmp_path / "out", "-q")
    assert result.exit_code == 0, result.output
    scores = {c: [] for c in CLASS_FLOORS}
    for case in cases:
        pred = read_label_slice(tmp_path / "out" / f"{case}.png")
        ref = read_label_slice(semiseg / "masks" / f"{case}.png")
        for c in scores:
            scores[c].append(_dice(pred > 0, ref > 0) if c == "infection" else _dice(pred == c, ref == c))
    for c, floor in CLASS_FLOORS.items():
        assert np.mean(scores[c]) >= floor, (c, np.mean(scores[c]))
