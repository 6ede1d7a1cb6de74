"""Ground-glass and consolidation told apart by density (slice2d.lesion_classes), and `slice2d
predict` writing them by default."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
from conftest import invoke

from slice2d.io import geometry_of
from slice2d.lesion_classes import CONSOLIDATION, GROUND_GLASS, split_classes
from slice2d.synth import make_phantom, write_phantoms


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2 * np.count_nonzero(a & b) / max(1, np.count_nonzero(a) + np.count_nonzero(b))


@pytest.mark.parametrize("seed", [1, 2, 5])
def test_the_phantoms_classes_come_back_from_their_union_in_hu_and_as_8_bit_slices(seed):
    """A phantom's ground-glass (-650..-400 HU) and consolidation (-80..30 HU) are found again from
    their union alone, in HU and in a lung-window 8-bit copy; the union is never changed."""
    ph = make_phantom(shape=(64, 64, 24), spacing=(5.0, 5.0, 10.0), seed=seed)
    geometry = geometry_of(nib.Nifti1Image(ph.image, ph.affine))
    window = np.clip((ph.image + 1000) / 1100 * 255, 0, 255).astype(np.uint8)
    for image, kind in ((ph.image, "hu"), (window, "uint8")):
        out = split_classes(image, ph.lesions > 0, ph.lungs, geometry, kind=kind)
        assert np.array_equal(out > 0, ph.lesions > 0) and set(np.unique(out)) <= {0, 1, 2}
        assert _dice(out == GROUND_GLASS, ph.lesions == 1) > 0.85, kind
        assert _dice(out == CONSOLIDATION, ph.lesions == 2) > 0.7, kind


def test_the_split_does_not_depend_on_the_voxel_order():
    """The same scan stored in another orientation (axes flipped and swapped, affine to match)
    gets the same classes, voxel for voxel."""
    ph = make_phantom(shape=(64, 64, 24), spacing=(5.0, 5.0, 10.0), seed=1)
    geometry = geometry_of(nib.Nifti1Image(ph.image, ph.affine))
    out = split_classes(ph.image, ph.lesions > 0, ph.lungs, geometry)
    from nibabel.orientations import apply_orientation

    ornt = np.array([[1, -1], [0, 1], [2, -1]])  # axes swapped, two of them flipped
    turned = nib.Nifti1Image(ph.image, ph.affine).as_reoriented(ornt)
    turn = lambda a: apply_orientation(a, ornt)  # noqa: E731 - the same turn of an array
    assert np.array_equal(np.asarray(turned.dataobj), turn(ph.image)) and not np.array_equal(turn(ph.image), ph.image)
    again = split_classes(turn(ph.image), turn(ph.lesions > 0), turn(ph.lungs), geometry_of(turned))
    assert np.array_equal(again, turn(out)) and (out == CONSOLIDATION).any()


@pytest.mark.slow
def test_predict_writes_ground_glass_and_consolidation_whose_union_is_the_binary_map(tmp_path):
    """By default `slice2d predict` with a binary lesion model writes 1 ground-glass and 2
    consolidation, reported per class; --binary writes their union as 1, the same voxels."""
    write_phantoms(tmp_path / "ph", cases=1, shape=(64, 64, 24), spacing=(5.0, 5.0, 10.0), seed=1)
    image = tmp_path / "ph" / "images" / "phantom_000.nii.gz"
    maps, reports = {}, {}
    for flag in ("", "--binary"):
        out = tmp_path / (flag or "classes")
        result = invoke("predict", image, "--out", out, "--model", "checkpoints/lesions-128", "-q", *([flag] if flag else []))
        assert result.exit_code == 0, result.output
        maps[flag] = np.asarray(nib.load(out / "phantom_000.nii.gz").dataobj)
        reports[flag] = json.loads((out / "severity" / "phantom_000.json").read_text())
    assert set(np.unique(maps[""])) == {0, 1, 2} and set(np.unique(maps["--binary"])) == {0, 1}
    assert np.array_equal(maps[""] > 0, maps["--binary"] > 0)
    classes, binary = reports[""], reports["--binary"]
    assert classes["lesion_classes"] == 2 and binary["lesion_classes"] == 1
    assert classes["ggo_ml"] + classes["consolidation_ml"] == pytest.approx(classes["lesion_ml"])
    assert classes["lesion_ml"] == pytest.approx(binary["lesion_ml"]) and classes["tss"] == binary["tss"]
    import csv

    row = next(csv.DictReader((tmp_path / "classes" / "severity" / "cohort.csv").open()))
    assert float(row["ggo_ml"]) == pytest.approx(classes["ggo_ml"]) and float(row["consolidation_pi"]) == pytest.approx(
        classes["consolidation_pi"])
    assert "ggo_ml" not in next(csv.DictReader((tmp_path / "--binary" / "severity" / "cohort.csv").open()))
    truth = np.asarray(nib.load(tmp_path / "ph" / "lesions" / "phantom_000.nii.gz").dataobj)
    found = (maps[""] > 0) & (truth > 0)  # where the model found lesion, the classes are the phantom's
    assert np.mean(maps[""][found] == truth[found]) > 0.8


def test_the_split_in_place_writes_the_same_classes_into_the_lesion_map():
    ph = make_phantom(shape=(64, 64, 24), spacing=(5.0, 5.0, 10.0), seed=2)
    geometry = geometry_of(nib.Nifti1Image(ph.image, ph.affine))
    lesions = (ph.lesions > 0).astype(np.uint8)
    expected = split_classes(ph.image, lesions, ph.lungs, geometry)
    assert set(np.unique(lesions)) == {0, 1}, "a new map unless asked: the input is left alone"
    written = split_classes(ph.image, lesions, ph.lungs, geometry, inplace=True)
    assert written is lesions and np.array_equal(lesions, expected) and (expected == CONSOLIDATION).any()
    with pytest.raises(ValueError, match="0 and 1"):
        split_classes(ph.image, lesions, ph.lungs, geometry, inplace=True)  # now holds 2: not a binary map


def test_severity_splits_another_tools_binary_map_on_request(tmp_path):
    """`slice2d severity --split-classes` scores a binary lesion map as ground-glass and
    consolidation by density on the CT, the same split `predict` makes, and leaves the map alone;
    without the CT it says what it needs."""
    ph = make_phantom(shape=(64, 64, 24), spacing=(5.0, 5.0, 10.0), seed=2)
    ct, binary = tmp_path / "ct.nii.gz", tmp_path / "binary.nii.gz"
    nib.save(nib.Nifti1Image(ph.image, ph.affine), ct)
    nib.save(nib.Nifti1Image((ph.lesions > 0).astype(np.uint8), ph.affine), binary)
    before = binary.read_bytes()
    result = invoke("severity", "--lesions", binary, "--image", ct, "--out", tmp_path / "r.json", "--split-classes", "-q")
    assert result.exit_code == 0, result.output
    assert binary.read_bytes() == before, "the map on disk is left alone"
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["lesion_classes"] == 2 and report["consolidation_ml"] > 0 and report["ggo_ml"] > 0
    truth = ph.lesions[ph.lungs > 0]
    voxel_ml = 5.0 * 5.0 * 10.0 / 1000
    assert report["consolidation_ml"] == pytest.approx(np.count_nonzero(truth == 2) * voxel_ml, rel=0.25)
    plain = invoke("severity", "--lesions", binary, "--image", ct, "--out", tmp_path / "p.json", "-q")
    assert plain.exit_code == 0 and json.loads((tmp_path / "p.json").read_text())["lesion_classes"] == 1
    lungs = tmp_path / "lungs.nii.gz"
    nib.save(nib.Nifti1Image(ph.lungs, ph.affine), lungs)
    missing = invoke("severity", "--lesions", binary, "--lungs", lungs, "--out", tmp_path / "m.json", "--split-classes")
    assert missing.exit_code != 0 and "needs the CT (--image)" in missing.output and "Traceback" not in missing.output
