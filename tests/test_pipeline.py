"""`slice2d severity` and `slice2d evaluate` through the CLI, on phantoms with known truth."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from conftest import assert_user_error, invoke

from slice2d.severity import region_score
from slice2d.synth import write_phantoms

LOBES = {1: "RUL", 2: "RML", 3: "RLL", 4: "LUL", 5: "LLL"}


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("phantoms")
    write_phantoms(out, cases=2, shape=(64, 64, 32), spacing=(5.0, 5.0, 9.0), seed=1)  # both carry lesions
    return out


def _array(path: Path) -> np.ndarray:
    return np.asarray(nib.load(path).dataobj)


def test_severity_from_truth_maps_equals_phantom_truth(phantoms, tmp_path):
    name = "phantom_000.nii.gz"
    out = tmp_path / "r.json"
    result = invoke("severity", "--lesions", phantoms / "lesions" / name, "--lungs", phantoms / "lungs" / name,
                    "--lobes", phantoms / "lobes" / name, "--image", phantoms / "images" / name, "--out", out, "-q")
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    lesions, lobes = _array(phantoms / "lesions" / name), _array(phantoms / "lobes" / name)
    assert lesions.any(), "phantom 0 should carry lesions"
    voxel_ml = 5 * 5 * 9 / 1000
    tss = 0
    for value, lobe in LOBES.items():
        region = lobes == value
        n_lesion = int(np.count_nonzero((lesions > 0) & region))
        assert report["regions"][lobe]["pi"] == pytest.approx(100 * n_lesion / region.sum())
        assert report["regions"][lobe]["lesion_ml"] == pytest.approx(n_lesion * voxel_ml)
        tss += region_score(n_lesion, int(region.sum()), "chung")
    assert report["tss"] == tss and report["tss_max"] == 20
    assert report["total_pi"] == pytest.approx(100 * np.count_nonzero(lesions) / np.count_nonzero(lobes))
    assert report["lesion_outside_lungs_voxels"] == 0
    assert report["ggo_ml"] == pytest.approx(np.count_nonzero(lesions == 1) * voxel_ml)
    assert out.with_suffix(".png").stat().st_size > 10_000
    rows = list(csv.DictReader(out.with_suffix(".csv").open()))
    assert len(rows) == 1 and int(rows[0]["tss"]) == tss


def test_severity_with_built_in_lungs_and_zones(phantoms, tmp_path):
    name = "phantom_001.nii.gz"
    out = tmp_path / "z.json"
    result = invoke("severity", "--lesions", phantoms / "lesions" / name, "--image", phantoms / "images" / name,
                    "--scheme", "zones6", "--out", out, "-q")
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert report["regions_kind"] == "zones" and report["tss_max"] == 24
    assert set(report["regions"]) == {"R_upper", "R_middle", "R_lower", "L_upper", "L_middle", "L_lower"}
    truth_ml = np.count_nonzero(_array(phantoms / "lungs" / name)) * 5 * 5 * 9 / 1000
    assert report["lung_ml"] == pytest.approx(truth_ml, rel=0.1)   # built-in extraction within 10 %


def test_severity_on_a_cohort_folder(phantoms, tmp_path):
    result = invoke("severity", "--lesions", phantoms / "lesions", "--lungs", phantoms / "lungs", "--lobes",
                    phantoms / "lobes", "--scheme", "pan", "--out", tmp_path / "cohort", "-q")
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader((tmp_path / "cohort" / "cohort.csv").open()))
    assert [r["case"] for r in rows] == ["phantom_000", "phantom_001"]
    for row in rows:
        report = json.loads((tmp_path / "cohort" / f"{row['case']}.json").read_text())
        assert int(row["tss"]) == report["tss"] and row["category"] == report["category"]
        assert report["tss_max"] == 25 and report["category"] in ("normal", "mild", "moderate", "severe")
    (tmp_path / "few").mkdir()
    (tmp_path / "few" / "phantom_000.nii.gz").symlink_to(phantoms / "lungs" / "phantom_000.nii.gz")
    result = invoke("severity", "--lesions", phantoms / "lesions", "--lungs", tmp_path / "few", "--out", tmp_path / "c2")
    assert_user_error(result, "no file named phantom_001.nii.gz")


def test_severity_bad_input(phantoms, tmp_path):
    name = "phantom_000.nii.gz"
    bad_lobes = tmp_path / "lobes.nii.gz"
    lobes = nib.load(phantoms / "lobes" / name)
    nib.save(nib.Nifti1Image(_array(phantoms / "lobes" / name) * 3, lobes.affine), bad_lobes)
    result = invoke("severity", "--lesions", phantoms / "lesions" / name, "--lungs", phantoms / "lungs" / name,
                    "--lobes", bad_lobes, "--out", tmp_path / "r.json")
    assert_user_error(result, "lobe map has label values", "--lobe-labels")
    empty = tmp_path / "empty.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros(lobes.shape, np.uint8), lobes.affine), empty)
    result = invoke("severity", "--lesions", phantoms / "lesions" / name, "--lungs", empty, "--out", tmp_path / "r.json")
    assert_user_error(result, "lung mask is empty")
    small = tmp_path / "small.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((10, 10, 10), np.uint8), lobes.affine), small)
    result = invoke("severity", "--lesions", phantoms / "lesions" / name, "--lungs", small, "--out", tmp_path / "r.json")
    assert_user_error(result, "shape (10, 10, 10) differs")
    assert not list(tmp_path.glob("r.*"))


def test_evaluate_cli_on_known_overlap(phantoms, tmp_path):
    """Reference vs itself scores 1; vs the lesion map with one lobe wiped, Dice drops as computed."""
    (tmp_path / "ref").mkdir()
    (tmp_path / "pred").mkdir()
    name = "phantom_000.nii.gz"
    img = nib.load(phantoms / "lesions" / name)
    ref = (_array(phantoms / "lesions" / name) > 0).astype(np.uint8)
    pred = ref.copy()
    pred[_array(phantoms / "lobes" / name) == 3] = 0
    nib.save(nib.Nifti1Image(ref, img.affine), tmp_path / "ref" / name)
    nib.save(nib.Nifti1Image(pred, img.affine), tmp_path / "pred" / name)
    result = invoke("evaluate", "--pred", tmp_path / "pred", "--ref", tmp_path / "ref", "--out", tmp_path / "ev", "-q")
    assert result.exit_code == 0, result.output
    row = next(csv.DictReader((tmp_path / "ev" / "metrics.csv").open()))
    expected = 2 * pred.sum() / (pred.sum() + ref.sum())
    assert float(row["dice"]) == pytest.approx(expected)
    assert float(row["precision"]) == pytest.approx(1.0)
    assert json.loads((tmp_path / "ev" / "summary.json").read_text())["n_cases"] == 1
    nib.save(nib.Nifti1Image(pred, img.affine * np.diag([1, 1, 2, 1])), tmp_path / "pred" / name)
    result = invoke("evaluate", "--pred", tmp_path / "pred", "--ref", tmp_path / "ref", "--out", tmp_path / "ev2")
    assert_user_error(result, "different grids")
    assert not (tmp_path / "ev2" / "metrics.csv").exists()
