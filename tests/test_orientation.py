"""Orientation of slice exports: the eight transforms, their detection, and the CLI that uses it."""

from __future__ import annotations

import csv
from pathlib import Path

import h5py
import numpy as np
import pytest
from conftest import SHARED, invoke
from PIL import Image

from slice2d.images import read_label_slice, read_slice
from slice2d.io import InputError, geometry_of, to_canonical
from slice2d.orientation import ORIENTATIONS, Orientation, decide, detect_orientation, slice_log_probs

CT_SLICES = SHARED / "covid-ct-slices"
SEMISEG = SHARED / "covid-semiseg" / "train" / "images"


def _need(folder: Path) -> Path:
    if not folder.is_dir():
        pytest.skip(f"real slices not found at {folder} (../shared/data is absent outside the dev setup)")
    return folder


def _coronacases(n: int, step: int = 9) -> list[str]:
    """Names of ``n`` upright covid-ct-slices slices (coronacases_001; its Radiopaedia patients are
    stored upside down)."""
    with (_need(CT_SLICES) / "cases.csv").open(newline="") as f:
        names = [name for name, patient in list(csv.reader(f))[1:] if patient == "coronacases_001"]
    return names[::step][:n]


def test_orientations_are_the_dihedral_group_and_invert_exactly():
    image = np.arange(12).reshape(3, 4)
    stored = [o.stored(image) for o in ORIENTATIONS]
    assert len({(s.shape, s.tobytes()) for s in stored}) == 8          # eight different pictures
    for o, s in zip(ORIENTATIONS, stored, strict=True):
        np.testing.assert_array_equal(o.upright(s), image)
        assert Orientation.from_code(o.code) == o
    np.testing.assert_array_equal(Orientation(1).upright(image), np.rot90(image, -1))   # the old rotate=1
    np.testing.assert_array_equal(Orientation(2, True).stored(image), image[::-1])        # upside down
    assert Orientation(1).describe_stored() == "turned a quarter turn counter-clockwise"
    assert Orientation(3).describe_stored() == "turned a quarter turn clockwise"
    with pytest.raises(InputError, match="rotate code 9"):
        Orientation.from_code(9)
    with pytest.raises(InputError, match="quarter turns must be"):
        Orientation(4)


def test_read_slice_applies_mirrored_codes(tmp_path):
    image = np.random.default_rng(0).integers(0, 255, (20, 30), dtype=np.uint8)
    Image.fromarray(image).save(tmp_path / "s.png")
    np.testing.assert_array_equal(read_slice(tmp_path / "s.png", 6), image[::-1])
    np.testing.assert_array_equal(read_slice(tmp_path / "s.png", Orientation(1, True)), np.rot90(image[:, ::-1], -1))
    np.testing.assert_array_equal(read_label_slice(tmp_path / "s.png", 4) > 0, image[:, ::-1] > 0)


def test_detection_is_equivariant():
    """Storing a slice another way permutes its eight scores accordingly (the scorer sees the same images)."""
    rng = np.random.default_rng(1)
    image = rng.integers(0, 255, (40, 56), dtype=np.uint8)
    base = slice_log_probs([image])[0]
    for o in ORIENTATIONS:
        scores = slice_log_probs([o.stored(image)])[0]
        # correction c of the stored image equals correction (c after o^-1) of the upright one
        for c, cand in enumerate(ORIENTATIONS):
            same = next(k for k, u in enumerate(ORIENTATIONS)
                        if np.array_equal(u.upright(image), cand.upright(o.stored(image))))
            assert scores[c] == pytest.approx(base[same], abs=1e-3)


def _phantom_slices() -> list[np.ndarray]:
    """8-bit lung-window axial slices of a synthetic chest phantom, upright (canonical P, L)."""
    import nibabel as nib

    from slice2d.synth import make_phantom

    ph = make_phantom((96, 96, 40), (3.5, 3.5, 7.0), 3)
    geometry = geometry_of(nib.Nifti1Image(ph.image, ph.affine))
    image, lungs = to_canonical(ph.image, geometry), to_canonical(ph.lungs, geometry)
    keep = [k for k in range(image.shape[2]) if np.mean(lungs[:, :, k] > 0) > 0.08]
    window = np.clip((image[:, :, keep] + 1100.0) / 1500.0, 0, 1)
    return [(window[:, :, i] * 255).astype(np.uint8) for i in range(len(keep))]


@pytest.mark.parametrize("o", ORIENTATIONS, ids=lambda o: f"code{o.code}")
def test_a_synthetic_phantom_export_is_detected(o):
    slices = _phantom_slices()
    assert len(slices) >= 5
    decision = detect_orientation([o.stored(s) for s in slices])
    assert decision.confident and decision.orientation == o, decision.message()


@pytest.mark.parametrize("o", ORIENTATIONS, ids=lambda o: f"code{o.code}")
def test_real_exports_are_detected_in_every_orientation(o):
    # the shipped scorer learned from both sets: this guards the shipped weights, while the
    # held-out accuracy is measured by bench/orientation.py's cross-validation
    upright = [read_slice(CT_SLICES / "images" / name) for name in _coronacases(6)]
    # covid-semiseg is stored transposed: a quarter turn clockwise and a mirror make it upright
    upright += [read_slice(p, Orientation(3, True)) for p in sorted(_need(SEMISEG).glob("*.jpg"))[:6]]
    lp = slice_log_probs([o.stored(u) for u in upright])
    assert decide(lp[:6]).orientation == o and decide(lp[6:]).orientation == o
    assert np.mean(np.argmax(lp, axis=1) == o.code) >= 10 / 12     # per slice, not only per folder


def test_unclear_folder_is_read_as_stored():
    flat = [np.full((32, 32), 100, np.uint8) for _ in range(4)]
    decision = decide(np.log(np.full((4, 8), 1 / 8)) + np.eye(8)[[0, 3, 5, 6]] * 0.1)
    assert not decision.confident and decision.orientation == ORIENTATIONS[0]
    assert "unclear" in decision.message() and "--rotate" in decision.message()
    assert detect_orientation(flat).n_slices == 4


def _turned_ct_folder(tmp_path: Path, stored_as: Orientation, n: int = 3) -> tuple[Path, list[str]]:
    """Upright covid-ct-slices slices, cropped to a non-square 216x256 and written stored ``stored_as``."""
    names = _coronacases(n, step=40)
    folder = tmp_path / "turned"
    folder.mkdir()
    for name in names:
        image = read_slice(CT_SLICES / "images" / name)[20:236]
        Image.fromarray(np.ascontiguousarray(stored_as.stored(image))).save(folder / name)
    return folder, names


def test_predict_detects_turned_slices_and_writes_masks_as_stored(tmp_path):
    from slice2d.runs import shipped_model

    stored_as = Orientation(3)  # stored turned a quarter turn clockwise
    folder, names = _turned_ct_folder(tmp_path, stored_as)
    result = invoke("predict", folder, "--model", shipped_model("lesions-128"), "--out", tmp_path / "out")
    assert result.exit_code == 0, result.output
    assert "slices stored turned a quarter turn clockwise" in result.output and "--rotate 3" in result.output
    dices = []
    for name in names:
        lungs = read_label_slice(tmp_path / "out" / "lungs" / name) > 0
        ref = stored_as.stored(read_label_slice(CT_SLICES / "lungs" / name)[20:236]) > 0
        assert lungs.shape == ref.shape == (256, 216)          # the stored shape, not the upright one
        assert read_label_slice(tmp_path / "out" / name).shape == (256, 216)
        dices.append(2 * np.count_nonzero(lungs & ref) / (np.count_nonzero(lungs) + np.count_nonzero(ref)))
    assert np.mean(dices) > 0.9, dices   # the lung maps overlay the turned images


def test_prepare_records_detected_and_overridden_orientation(tmp_path):
    folder, names = _turned_ct_folder(tmp_path, Orientation(2, True), n=2)
    labels = tmp_path / "labels"
    labels.mkdir()
    for name in names:
        Image.fromarray(np.ascontiguousarray(Orientation(2, True).stored(
            read_label_slice(CT_SLICES / "lungs" / name)[20:236] * 255))).save(labels / name)
    for options, code in (((), 6), (("--rotate", "0"), 0), (("--rotate", "1", "--mirror"), 5)):
        out = tmp_path / f"s{code}.h5"
        result = invoke("prepare", "--images", folder, "--labels", labels, "--out", out, "--config", "real-lungs", "-q",
                        *options)
        assert result.exit_code == 0, result.output
        with h5py.File(out, "r") as h5:
            assert {int(h5["cases"][c].attrs["rotate"]) for c in h5["cases"]} == {code}


def test_rotate_options_are_checked(tmp_path):
    for args, fragment in ((("--mirror",), "needs an explicit"), (("--rotate", "5"), "use auto, or 0-3")):
        result = invoke("predict", tmp_path, "--out", tmp_path / "o", *args)
        assert result.exit_code == 2 and fragment in result.output, result.output


def test_prepare_finds_each_patients_orientation(tmp_path):
    """One folder, two patients' exports stored different ways round (as covid-ct-slices keeps its
    coronacases upright and its Radiopaedia patients upside down): each patient is turned its own way."""
    from slice2d.config import load_config
    from slice2d.dataset import prepare

    upside_down = Orientation(2, True)
    images, labels = tmp_path / "images", tmp_path / "labels"
    images.mkdir()
    labels.mkdir()
    patients = {}
    for i, s in enumerate(_phantom_slices()[:12]):
        patient, stored_as = ("a", Orientation()) if i % 2 else ("b", upside_down)
        name = f"{i:04d}.png"
        Image.fromarray(np.ascontiguousarray(stored_as.stored(s))).save(images / name)
        Image.fromarray(np.ascontiguousarray(stored_as.stored((s < 60).astype(np.uint8) * 255))).save(labels / name)
        patients[f"{i:04d}"] = patient
    cfg = load_config("real-lungs")

    def codes(out: Path) -> dict[str, set[int]]:
        found: dict[str, set[int]] = {}
        with h5py.File(out, "r") as h5:
            for c in h5["cases"]:
                found.setdefault(str(h5["cases"][c].attrs["patient"]), set()).add(int(h5["cases"][c].attrs["rotate"]))
        return found

    assert set(patients) == {p.stem for p in images.glob("*.png")}   # case names are the file stems
    assert codes(prepare(images, labels, tmp_path / "by-patient.h5", cfg, patients=patients, rotate=None)) == \
        {"a": {0}, "b": {upside_down.code}}
    # without patients: one export, one decision for every slice
    one = codes(prepare(images, labels, tmp_path / "one.h5", cfg, rotate=None))
    assert len(set().union(*one.values())) == 1
    # a patient of one slice is too few to decide alone: it takes the decision for all
    singles = codes(prepare(images, labels, tmp_path / "singles.h5", cfg, patients={k: k for k in patients}, rotate=None))
    assert len(set().union(*singles.values())) == 1
