"""Slice-image input: reading PNG/JPG slices and masks, preparing image folders, predicting a folder."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from conftest import assert_user_error, invoke

from slice2d.config import load_config
from slice2d.dataset import SliceFile, prepare, split_lungs_by_side
from slice2d.images import read_label_slice, read_patients, read_slice
from slice2d.train import train


def _chest_slice(rng: np.random.Generator, shape=(70, 90)) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """An 8-bit slice with two dark 'lungs' and a bright 'lesion'; lung mask 0/255, lesion mask 0/1."""
    rows, cols = np.mgrid[: shape[0], : shape[1]]
    image = np.full(shape, 180, np.uint8)
    lungs = np.zeros(shape, np.uint8)
    for centre in (shape[1] * 0.3, shape[1] * 0.7):
        inside = ((rows - shape[0] / 2) / (shape[0] * 0.35)) ** 2 + ((cols - centre) / (shape[1] * 0.15)) ** 2 < 1
        image[inside] = 40
        lungs[inside] = 255
    lesion = (((rows - shape[0] / 2 - rng.integers(-5, 5)) ** 2 + (cols - shape[1] * 0.3) ** 2) < 36) & (lungs > 0)
    image[lesion] = 120
    noisy = np.clip(image + rng.normal(0, 5, shape), 0, 255).astype(np.uint8)
    return noisy, lungs, lesion.astype(np.uint8)


@pytest.fixture(scope="module")
def slices_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("slices")
    rng = np.random.default_rng(0)
    for sub in ("images", "lungs", "lesions"):
        (root / sub).mkdir()
    with (root / "cases.csv").open("w") as f:
        f.write("slice,case\n")
        for i in range(12):
            image, lungs, lesion = _chest_slice(rng)
            Image.fromarray(image).save(root / "images" / f"s{i}.png")
            Image.fromarray(lungs).save(root / "lungs" / f"s{i}.png")
            palette = Image.fromarray(lesion, mode="P")
            palette.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
            palette.save(root / "lesions" / f"s{i}.png")
            f.write(f"s{i}.png,patient{i // 3}\n")
    return root


def test_read_slices_and_masks(slices_dir, tmp_path):
    image = read_slice(slices_dir / "images" / "s0.png")
    assert image.shape == (70, 90) and image.dtype == np.uint8
    assert set(np.unique(read_label_slice(slices_dir / "lungs" / "s0.png"))) == {0, 1}       # 0/255 -> 0/1
    assert set(np.unique(read_label_slice(slices_dir / "lesions" / "s0.png"))) == {0, 1}     # palette indices
    np.testing.assert_array_equal(read_slice(slices_dir / "images" / "s0.png", rotate=1), np.rot90(image, -1))
    rgb = np.stack([image] * 3, axis=-1)
    Image.fromarray(rgb).save(tmp_path / "grey.png")
    np.testing.assert_array_equal(read_slice(tmp_path / "grey.png"), image)
    rgb[..., 0] = 0
    Image.fromarray(rgb).save(tmp_path / "colour.png")
    with pytest.raises(ValueError, match="colour image"):
        read_slice(tmp_path / "colour.png")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    with pytest.raises(ValueError, match="cannot be read as an image"):
        read_slice(tmp_path / "broken.png")
    assert read_patients(slices_dir / "cases.csv")["s4"] == "patient1"


def test_split_lungs_by_side():
    mask = np.zeros((20, 30, 2), np.uint8)
    mask[5:15, 3:12, 0] = 1          # image left = patient right
    mask[5:15, 18:27, 0] = 1
    mask[5:15, 3:27, 1] = 1          # touching lungs in one component: cut at the midline
    out = split_lungs_by_side(mask)
    assert set(np.unique(out[:, :12, 0])) == {0, 1} and set(np.unique(out[:, 18:, 0])) == {0, 2}
    assert (out[5:15, 3:15, 1] == 1).all() and (out[5:15, 15:27, 1] == 2).all()


def test_prepare_image_folder_round_trip(slices_dir, tmp_path):
    cfg = load_config("real-lungs").updated(data={"size": 128})
    out = prepare(slices_dir / "images", slices_dir / "lungs", tmp_path / "s.h5", cfg,
                  patients=read_patients(slices_dir / "cases.csv"))
    with SliceFile(out) as sf:
        assert len(sf.cases) == 12 and sf.patient("s5") == "patient1"
        back = sf.reassemble_labels("s0")[:, :, 0]
    truth = split_lungs_by_side(read_label_slice(slices_dir / "lungs" / "s0.png")[:, :, None])[:, :, 0]
    np.testing.assert_array_equal(back, truth)
    assert set(np.unique(back)) == {0, 1, 2}


def test_predict_slice_folder_writes_pngs_stack_and_severity(slices_dir, tmp_path):
    small = {"data": {"size": 32}, "model": {"depth": 2, "base_filters": 4},
             "train": {"epochs": 1, "jit_compile": False, "batch_size": 4, "patch": 0}}
    patients = read_patients(slices_dir / "cases.csv")
    runs = {}
    for task, labels in (("lungs", "lungs"), ("lesions", "lesions")):
        cfg = load_config(f"real-{task}").updated(**small)
        if task == "lungs":  # the lungs must be found for a severity report: train a little longer
            cfg = cfg.updated(train={"epochs": 8, "learning_rate": 0.01})
        h5 = prepare(slices_dir / "images", slices_dir / labels, tmp_path / f"{task}.h5", cfg, patients=patients)
        runs[task] = train(h5, tmp_path / task, cfg, verbose=0)
    out = tmp_path / "out"
    result = invoke("predict", slices_dir / "images", "--model", runs["lesions"], "--lungs-model", runs["lungs"],
                    "--out", out, "-q")
    assert result.exit_code == 0, result.output
    for i in range(12):
        for sub in ("", "lungs/"):
            written = np.asarray(Image.open(out / f"{sub}s{i}.png"))
            assert written.shape == (70, 90) and written.dtype == np.uint8
    import nibabel as nib
    stack = nib.load(out / "stack" / "lesions.nii.gz")
    assert stack.shape == (70, 90, 12)
    report = json.loads((out / "severity" / "images.json").read_text())
    assert report["regions_kind"] == "zones" and "tss" in report
    assert_user_error(invoke("predict", slices_dir / "images", "--model", runs["lesions"], "--out",
                             slices_dir / "images"), "--out is the input folder")
