"""Known-answer tests for slice2d.metrics (hand-built volumes, anisotropic spacing)."""

import csv
import json
import math

import nibabel as nib
import numpy as np
import pytest
from conftest import assert_user_error, invoke

from slice2d.metrics import (
    LESION_TOLERANCE_MM,
    LUNG_TOLERANCE_MM,
    METRIC_NAMES,
    _cell_areas,
    binary_metrics,
    default_tolerance,
    evaluate_case,
    evaluate_folders,
    surface_mask,
)


def _cubes():
    a = np.zeros((10, 10, 10), bool)
    a[2:6, 2:6, 2:6] = True  # 64 voxels
    b = np.zeros_like(a)
    b[4:8, 2:6, 2:6] = True  # 64 voxels, 32 shared with a
    return a, b


def test_overlap_metrics_on_paper():
    a, b = _cubes()
    m = binary_metrics(a, b, (3.0, 0.5, 2.0))
    assert m["dice"] == pytest.approx(0.5)
    assert m["iou"] == pytest.approx(32 / 96)
    assert m["sensitivity"] == pytest.approx(0.5)
    assert m["precision"] == pytest.approx(0.5)
    assert m["specificity"] == pytest.approx(904 / 936)
    assert m["pred_ml"] == pytest.approx(64 * 3.0 / 1000)
    assert m["ref_ml"] == pytest.approx(64 * 3.0 / 1000)
    assert m["rel_volume_error"] == pytest.approx(0.0)
    assert set(m) == set(METRIC_NAMES)


def test_relative_volume_error_sign():
    a, _ = _cubes()
    big = np.zeros_like(a)
    big[2:6, 2:6, 2:8] = True  # 96 voxels
    assert binary_metrics(big, a, (1, 1, 1))["rel_volume_error"] == pytest.approx(0.5)
    assert binary_metrics(a, big, (1, 1, 1))["rel_volume_error"] == pytest.approx(-1 / 3)


def test_surface_is_mask_minus_six_neighbour_erosion_with_border():
    a, _ = _cubes()
    assert surface_mask(a).sum() == 64 - 8  # 4x4x4 cube minus its 2x2x2 core
    full = np.ones((3, 3, 3), bool)
    assert surface_mask(full).sum() == 26  # border voxels count as boundary


@pytest.mark.parametrize("axis,spacing,expected_mm", [
    (0, (3.0, 0.5, 1.0), 6.0),
    (2, (0.7, 0.7, 2.5), 5.0),
    (1, (1.0, 4.0, 1.0), 8.0),
])
def test_hd95_assd_surface_dice_for_shifted_planes(axis, spacing, expected_mm):
    # One-voxel-thick planes across the whole array: every voxel is surface, every distance is the shift.
    shape = (8, 8, 8)
    pred, ref = np.zeros(shape, bool), np.zeros(shape, bool)
    pred[(slice(None),) * axis + (2,)] = True
    ref[(slice(None),) * axis + (4,)] = True
    m = binary_metrics(pred, ref, spacing, tolerance_mm=expected_mm - 0.1)
    assert m["hd95_mm"] == pytest.approx(expected_mm)
    assert m["assd_mm"] == pytest.approx(expected_mm)
    assert m["surface_dice"] == 0.0
    assert m["dice"] == 0.0
    assert binary_metrics(pred, ref, spacing, tolerance_mm=expected_mm)["surface_dice"] == 1.0
    assert binary_metrics(pred, ref, spacing, tolerance_mm=expected_mm + 1)["surface_dice"] == 1.0


def test_hd95_is_percentile_of_union_of_both_directions():
    # pred: planes x=2 and x=6; ref: plane x=2. pred->ref: 64 zeros + 64 x 4 voxels; ref->pred: 64 zeros.
    pred, ref = np.zeros((9, 8, 8), bool), np.zeros((9, 8, 8), bool)
    pred[2], pred[6], ref[2] = True, True, True
    m = binary_metrics(pred, ref, (2.0, 1.0, 1.0), tolerance_mm=1.0)
    union = np.r_[np.zeros(64), np.full(64, 8.0), np.zeros(64)]
    assert m["hd95_mm"] == pytest.approx(np.percentile(union, 95))
    assert m["assd_mm"] == pytest.approx(8.0 / 3)
    assert m["surface_dice"] == pytest.approx(128 / 192)


def test_empty_mask_rule():
    a, _ = _cubes()
    empty = np.zeros_like(a)
    both = binary_metrics(empty, empty, (1, 2, 3))
    assert both["dice"] == both["iou"] == both["surface_dice"] == 1.0
    assert both["hd95_mm"] == both["assd_mm"] == 0.0
    assert both["specificity"] == 1.0
    assert math.isnan(both["sensitivity"]) and math.isnan(both["precision"])
    assert math.isnan(both["rel_volume_error"])
    for pred, ref in ((a, empty), (empty, a)):
        one = binary_metrics(pred, ref, (1, 2, 3))
        assert one["dice"] == one["iou"] == one["surface_dice"] == 0.0
        assert math.isnan(one["hd95_mm"]) and math.isnan(one["assd_mm"])
    fp_only = binary_metrics(a, empty, (1, 1, 1))
    assert fp_only["precision"] == 0.0 and math.isnan(fp_only["sensitivity"])
    assert math.isnan(fp_only["rel_volume_error"]) and fp_only["pred_ml"] == pytest.approx(0.064)
    fn_only = binary_metrics(empty, a, (1, 1, 1))
    assert fn_only["sensitivity"] == 0.0 and math.isnan(fn_only["precision"])
    assert fn_only["rel_volume_error"] == -1.0


def test_bad_inputs_raise():
    a, _ = _cubes()
    with pytest.raises(ValueError, match="shape"):
        binary_metrics(a, a[:5], (1, 1, 1))
    with pytest.raises(ValueError, match="spacing"):
        binary_metrics(a, a, (1, 1))
    with pytest.raises(ValueError, match="kind"):
        default_tolerance("bones")


def test_default_tolerances():
    assert default_tolerance("lungs") == LUNG_TOLERANCE_MM == 1.0
    assert default_tolerance("lesions") == LESION_TOLERANCE_MM == 3.0


def test_evaluate_case_rows_and_tolerances():
    a, b = _cubes()
    pred = a.astype(np.uint8) + 2 * np.pad(np.ones((2, 2, 2), np.uint8), ((0, 8), (0, 8), (0, 8)))
    ref = b.astype(np.uint8)
    rows = evaluate_case(pred, ref, (1, 1, 1), {1: "lesion", 2: "other"}, {2: 1.0})
    assert [(r["label"], r["name"], r["tolerance_mm"]) for r in rows] == [(1, "lesion", 3.0), (2, "other", 1.0)]
    assert rows[0]["dice"] == pytest.approx(0.5)
    assert rows[1]["dice"] == 0.0 and rows[1]["pred_ml"] == pytest.approx(0.008)
    default = evaluate_case(pred, ref, (1, 1, 1))
    assert [r["label"] for r in default] == [1]


LPS = np.array([[-0.8, 0, 0, 100.0], [0, -0.8, 0, 90.0], [0, 0, 2.5, -50.0], [0, 0, 0, 1]])


def _save(arr, path, affine=LPS):
    nib.save(nib.Nifti1Image(arr.astype(np.uint8), affine), str(path))


def _folders(tmp_path):
    a, b = _cubes()
    pdir, rdir = tmp_path / "pred", tmp_path / "ref"
    pdir.mkdir()
    rdir.mkdir()
    # case1: label 1 half-overlapping, label 2 perfect; case2: label 1 perfect, label 2 missing in pred.
    p1, r1 = a.astype(np.uint8), b.astype(np.uint8)
    p1[0, 0, 0] = r1[0, 0, 0] = 2
    p2, r2 = a.astype(np.uint8), a.astype(np.uint8)
    r2[9, 9, 9] = 2
    _save(p1, pdir / "case1.nii.gz")
    _save(r1, rdir / "case1.nii.gz")
    _save(p2, pdir / "case2.nii")
    _save(r2, rdir / "case2.nii")
    return pdir, rdir


def test_evaluate_folders_end_to_end(tmp_path):
    pdir, rdir = _folders(tmp_path)
    seen = []
    out = evaluate_folders(pdir, rdir, tmp_path / "out", progress=seen.append)
    assert seen == ["case1", "case2"]
    assert sorted(p.name for p in out.iterdir()) == ["metrics.csv", "metrics.png", "summary.json"]
    with open(out / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(r["case"], r["label"]) for r in rows] == [("case1", "1"), ("case1", "2"), ("case2", "1"), ("case2", "2")]
    assert float(rows[0]["dice"]) == pytest.approx(0.5)
    assert float(rows[2]["dice"]) == 1.0
    assert float(rows[0]["pred_ml"]) == pytest.approx(64 * 0.8 * 0.8 * 2.5 / 1000)
    assert rows[3]["hd95_mm"] == "nan"
    summary = json.loads((out / "summary.json").read_text())  # strict JSON: no NaN tokens
    lab1 = summary["labels"]["label_1"]["metrics"]
    assert lab1["dice"]["mean"] == pytest.approx(0.75)
    assert lab1["dice"]["median"] == pytest.approx(0.75)
    assert lab1["dice"]["sd"] == pytest.approx(np.std([0.5, 1.0], ddof=1))
    lab2 = summary["labels"]["label_2"]["metrics"]
    assert lab2["hd95_mm"]["n"] == 1 and lab2["dice"]["n"] == 2
    assert lab2["sensitivity"]["mean"] == pytest.approx(0.5)
    single = summary["labels"]["label_2"]["metrics"]["hd95_mm"]
    assert single["sd"] is None and single["mean"] == 0.0
    assert (out / "metrics.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not [p for p in out.iterdir() if p.name.startswith(".")]


def test_evaluate_folders_labels_and_tolerance(tmp_path):
    pdir, rdir = _folders(tmp_path)
    out = evaluate_folders(pdir, rdir, tmp_path / "out", labels={1: "lesion"}, tolerance_mm=1.0)
    summary = json.loads((out / "summary.json").read_text())
    assert list(summary["labels"]) == ["lesion"]
    assert summary["labels"]["lesion"]["tolerance_mm"] == 1.0


def test_evaluate_union_scores_ground_glass_and_consolidation_as_one_against_binary_references(tmp_path):
    """predict writes ground-glass 1 and consolidation 2; against a binary infection reference,
    --union scores their union (label 1, "foreground"), where label 1 alone would score only the
    ground-glass."""
    pred, ref = np.zeros((16, 16, 4), np.uint8), np.zeros((16, 16, 4), np.uint8)
    pred[2:6, 2:10, :], pred[2:6, 10:14, :] = 1, 2  # ground-glass and consolidation side by side
    ref[2:6, 2:14, :] = 1  # the same infection, one label
    for name, arr in (("p", pred), ("r", ref)):
        (tmp_path / name).mkdir()
        _save(arr, tmp_path / name / "case1.nii")
    plain = json.loads((evaluate_folders(tmp_path / "p", tmp_path / "r", tmp_path / "o1") / "summary.json").read_text())
    assert plain["labels"]["label_1"]["metrics"]["dice"]["mean"] == pytest.approx(2 * 32 / (32 + 48))
    union = json.loads((evaluate_folders(tmp_path / "p", tmp_path / "r", tmp_path / "o2", union=True)
                        / "summary.json").read_text())
    assert list(union["labels"]) == ["foreground"] and union["labels"]["foreground"]["metrics"]["dice"]["mean"] == 1.0
    named = json.loads((evaluate_folders(tmp_path / "p", tmp_path / "r", tmp_path / "o3", labels={1: "infection"},
                                         union=True) / "summary.json").read_text())
    assert named["labels"]["infection"]["metrics"]["dice"]["mean"] == 1.0


def test_evaluate_folders_refuses_different_grids(tmp_path):
    pdir, rdir = _folders(tmp_path)
    moved = LPS.copy()
    moved[0, 3] += 1.0
    _save(np.asanyarray(nib.load(str(pdir / "case2.nii")).dataobj), pdir / "case2.nii", moved)
    with pytest.raises(ValueError, match="case2.nii: prediction and reference are on different grids"):
        evaluate_folders(pdir, rdir, tmp_path / "out")
    assert not (tmp_path / "out" / "metrics.csv").exists()


def test_evaluate_folders_refuses_unpaired_and_empty(tmp_path):
    pdir, rdir = _folders(tmp_path)
    (pdir / "case2.nii").rename(pdir / "case3.nii")
    with pytest.raises(ValueError, match=r"only in .*pred: \['case3.nii'\]; only in .*ref: \['case2.nii'\]"):
        evaluate_folders(pdir, rdir, tmp_path / "out")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="no .nii, .nii.gz, .nrrd, .nhdr, .mha or .mhd files"):
        evaluate_folders(empty, rdir, tmp_path / "out")


@pytest.mark.parametrize("damage, message", [
    ("garbage", "cannot be read as NIfTI"),
    ("truncated", "voxel data cannot be read"),
])
def test_evaluate_cli_names_a_damaged_prediction(tmp_path, damage, message):
    pdir, rdir = _folders(tmp_path)
    path = pdir / "case1.nii.gz"
    if damage == "garbage":
        path.write_bytes(b"this is not a NIfTI file" * 40)
    else:  # a readable header, voxel data cut short
        noise = np.random.default_rng(0).integers(0, 3, (30, 30, 30))
        _save(noise, path)
        data = path.read_bytes()
        path.write_bytes(data[: len(data) * 2 // 3])
    result = invoke("evaluate", "--pred", pdir, "--ref", rdir, "--out", tmp_path / "out")
    assert_user_error(result, f"{path}: {message}")
    assert not (tmp_path / "out" / "metrics.csv").exists()


def _ball(shape, spacing, centre_mm, radius_mm):
    grid = np.ogrid[tuple(slice(0, n) for n in shape)]
    return sum((g * s - c) ** 2 for g, s, c in zip(grid, spacing, centre_mm, strict=True)) <= radius_mm**2


def _marching_cubes_box_area(n, spacing):
    """Area (mm²) of the marching-cubes surface of a box of n0×n1×n2 voxels: flat faces spanning
    the centres of the outer voxels, a chamfer half a voxel wide along each edge, and a triangle
    cutting each corner."""
    (n0, n1, n2), (s0, s1, s2) = n, spacing
    a0, a1, a2 = (n0 - 1) * s0, (n1 - 1) * s1, (n2 - 1) * s2
    faces = 2 * (a1 * a2 + a0 * a2 + a0 * a1)
    edges = 2 * (a2 * math.hypot(s0, s1) + a0 * math.hypot(s1, s2) + a1 * math.hypot(s0, s2))
    corners = math.sqrt((s1 * s2) ** 2 + (s0 * s2) ** 2 + (s0 * s1) ** 2)
    return faces + edges + corners


def test_cell_areas_follow_the_marching_cubes_table():
    areas = _cell_areas(3, (1.0, 1.0, 1.0))
    assert areas[0] == areas[255] == 0.0
    assert areas[0b00000001] == pytest.approx(math.sqrt(3) / 8)  # one corner in: a triangle
    assert areas[0b00000011] == pytest.approx(math.sqrt(2) / 2)  # two corners along an edge: a slanted rectangle
    assert areas[0b00001111] == pytest.approx(1.0)  # the four corners of a face: a unit square
    assert areas[0b10000001] == pytest.approx(2 * math.sqrt(3) / 8)  # opposite corners: two triangles
    assert _cell_areas(3, (2.0, 1.0, 1.0))[0b00001111] == pytest.approx(1.0)  # a square across axes 1, 2
    assert _cell_areas(3, (1.0, 2.0, 3.0))[0b01010101] == pytest.approx(1.0 * 2.0)  # across axes 0, 1
    assert _cell_areas(2, (1.0, 2.0))[0b0011] == pytest.approx(2.0)  # 2D: a segment along axis 1


@pytest.mark.parametrize("ndim", [2, 3])
def test_surface_dice_area_of_concentric_spheres(ndim):
    # Every point of one sphere lies 3 mm from the other. Each surface cell is within half a cell
    # diagonal (< 1 mm here) of the true sphere, so the distances stay within 3 ± 2 mm.
    spacing = (0.8, 0.8, 1.5)[:ndim]
    shape, centre = (60, 60, 34)[:ndim], (24.0, 24.0, 25.0)[:ndim]
    inner, outer = _ball(shape, spacing, centre, 10.0), _ball(shape, spacing, centre, 13.0)
    assert binary_metrics(inner, outer, spacing, tolerance_mm=0.9)["surface_dice_area"] == 0.0
    assert binary_metrics(inner, outer, spacing, tolerance_mm=5.1)["surface_dice_area"] == 1.0


def test_surface_dice_area_is_a_ratio_of_areas():
    # Reference: two far-apart spheres, R = 12 and r = 6 mm; prediction: the big one alone. All
    # surface of the big sphere matches, none of the small one: 2·4πR² / (2·4πR² + 4πr²) = 8/9.
    # Marching cubes overestimates a sphere's area by about 8 % at any size, which cancels.
    spacing = (0.7, 0.7, 0.7)
    big = _ball((80, 50, 50), spacing, (17.0, 17.0, 17.0), 12.0)
    small = _ball((80, 50, 50), spacing, (43.0, 17.0, 17.0), 6.0)
    m = binary_metrics(big, big | small, spacing, tolerance_mm=2.0)
    assert m["surface_dice_area"] == pytest.approx(8 / 9, abs=0.005)


def test_surface_dice_area_of_a_shifted_cube():
    # Cubes of side L = 20 mm, one shifted by s = 8 mm along axis 0, tolerance t = 4.2 mm. On a
    # cube's surface (6 L²) the points within t of the other cube are, on each of the four side
    # faces, those within s - t of its far end (L (L - s + t)), and on the face inside the other
    # cube those within t of its rim (L² - (L - 2t)²); the leading and trailing faces lie s and
    # L - s away. Same for the other cube. With 0.5 mm voxels the discretisation moves this by < 0.01.
    side, shift, tol, h = 20.0, 8.0, 4.2, 0.5
    n, k = round(side / h), round(shift / h)
    a = np.zeros((n + k + 4, n + 4, n + 4), bool)
    b = a.copy()
    a[2:2 + n, 2:2 + n, 2:2 + n] = True
    b[2 + k:2 + k + n, 2:2 + n, 2:2 + n] = True
    expected = (4 * side * (side - shift + tol) + side**2 - (side - 2 * tol) ** 2) / (6 * side**2)
    m = binary_metrics(a, b, (h, h, h), tolerance_mm=tol)
    assert m["surface_dice_area"] == pytest.approx(expected, abs=0.01)


def test_surface_dice_area_and_voxel_counted_surface_dice_differ_on_anisotropic_voxels():
    # Voxels of 1 × 1 × 4 mm. P: an axial plate, 40 × 40 voxels, one slice; Q: a sagittal plate,
    # 40 voxels × 10 slices, one voxel thick: both 40 × 40 mm, but P has 1600 boundary voxels per
    # face and Q 400. Reference P + Q, prediction P: the voxel-counted surface Dice weighs P's
    # surface four times more than its area does.
    spacing = (1.0, 1.0, 4.0)
    p, q = np.zeros((100, 50, 14), bool), np.zeros((100, 50, 14), bool)
    p[3:43, 3:43, 2] = True
    q[70, 3:43, 2:12] = True
    m = binary_metrics(p, p | q, spacing, tolerance_mm=2.0)
    assert m["surface_dice"] == pytest.approx(2 * 1600 / (2 * 1600 + 400))
    area_p, area_q = _marching_cubes_box_area((40, 40, 1), spacing), _marching_cubes_box_area((1, 40, 10), spacing)
    assert m["surface_dice_area"] == pytest.approx(2 * area_p / (2 * area_p + area_q), rel=1e-9)
    assert m["surface_dice_area"] < m["surface_dice"] - 0.15
