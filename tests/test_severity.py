"""Known-answer tests for slice2d.severity: bin edges, schemes, lobe presets, zones, errors."""

import csv
import json
import math
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from slice2d.report import severity_figure, write_cohort_csv, write_report
from slice2d.severity import LOBE_NAMES, LOBE_PRESETS, pan_category, region_score, severity_report
from slice2d.zones import ZONE_NAMES, lung_zones

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "ct-samples"
needs_data = pytest.mark.skipif(not DATA.is_dir(), reason=f"shared data folder {DATA} is absent")

# Anisotropic, LPS-oriented grid: voxel 0.7 x 0.7 x 2.5 mm.
AFFINE = np.array([[-0.7, 0, 0, 80.0], [0, -0.7, 0, 60.0], [0, 0, 2.5, -100.0], [0, 0, 0, 1]])
REGION = 1000  # voxels per lobe: 10 x 10 x 10 blocks


def _lobe_volume():
    """slice2d lobe labels as five 10x10x10 blocks; right lobes at low array x (LPS: patient right)."""
    lobes = np.zeros((20, 10, 30), np.uint8)
    lobes[0:10, :, 20:30] = 1  # RUL
    lobes[0:10, :, 10:20] = 2  # RML
    lobes[0:10, :, 0:10] = 3  # RLL
    lobes[10:20, :, 15:30] = 0
    lobes[10:20, :, 20:30] = 4  # LUL
    lobes[10:20, :, 0:10] = 5  # LLL
    return lobes


def _lesions_with_counts(lobes, counts, table=LOBE_PRESETS["slice2d"]):
    """Lesion map with counts[name] lesion voxels in each lobe (first voxels in C order)."""
    lesions = np.zeros_like(lobes)
    for value, name in table.items():
        idx = np.flatnonzero(lobes == value)[: counts.get(name, 0)]
        lesions.flat[idx] = 1
    return lesions


def _lungs_from(lobes):
    return np.where(np.isin(lobes, [1, 2, 3]), 1, np.where(np.isin(lobes, [4, 5]), 2, 0)).astype(np.uint8)


CHUNG = [(0, 0), (1, 1), (250, 1), (251, 2), (500, 2), (501, 3), (750, 3), (751, 4), (1000, 4)]
PAN = [(0, 0), (1, 1), (50, 1), (51, 2), (250, 2), (251, 3), (500, 3), (501, 4), (750, 4), (751, 5), (1000, 5)]


@pytest.mark.parametrize("lesion,score", CHUNG)
def test_chung_edges(lesion, score):
    assert region_score(lesion, REGION, "chung") == score
    assert region_score(lesion, REGION, "zones6") == score


@pytest.mark.parametrize("lesion,score", PAN)
def test_pan_edges(lesion, score):
    assert region_score(lesion, REGION, "pan") == score


def test_edges_use_exact_arithmetic():
    # Counts this large lose precision as float percentages; the integer comparison stays exact.
    assert region_score(10**17, 4 * 10**17, "chung") == 1
    assert region_score(10**17 + 1, 4 * 10**17, "chung") == 2
    assert region_score(5, 100, "pan") == 1 and region_score(7, 140, "pan") == 1


@pytest.mark.parametrize("tss,category", [(0, "normal"), (1, "mild"), (7, "mild"), (8, "moderate"),
                                          (17, "moderate"), (18, "severe"), (25, "severe")])
def test_pan_categories(tss, category):
    assert pan_category(tss) == category


@pytest.mark.parametrize("scheme", ["chung", "pan"])
@pytest.mark.parametrize("counts", [
    {"RUL": 0, "RML": 50, "RLL": 250, "LUL": 500, "LLL": 750},
    {"RUL": 1, "RML": 51, "RLL": 251, "LUL": 501, "LLL": 751},
    {"RUL": 1000, "RML": 1000, "RLL": 1000, "LUL": 1000, "LLL": 1000},
])
def test_lobe_report_on_hand_built_volume(scheme, counts):
    lobes = _lobe_volume()
    lesions = _lesions_with_counts(lobes, counts)
    r = severity_report(lesions, _lungs_from(lobes), AFFINE, lobes=lobes, scheme=scheme, case="c1")
    voxel_ml = 0.7 * 0.7 * 2.5 / 1000
    expected = {n: region_score(counts[n], REGION, scheme) for n in LOBE_NAMES}
    assert {n: r["regions"][n]["score"] for n in LOBE_NAMES} == expected
    assert {n: r["regions"][n]["pi"] for n in LOBE_NAMES} == pytest.approx({n: counts[n] / 10 for n in LOBE_NAMES})
    assert r["tss"] == sum(expected.values())
    assert r["tss_max"] == (20 if scheme == "chung" else 25)
    assert r["regions_kind"] == "lobes" and r["note"] is None and r["case"] == "c1"
    assert r["regions"]["RUL"]["region_ml"] == pytest.approx(REGION * voxel_ml)
    assert r["lung_ml"] == pytest.approx(5 * REGION * voxel_ml)
    assert r["lesion_ml"] == pytest.approx(sum(counts.values()) * voxel_ml)
    assert r["total_pi"] == pytest.approx(sum(counts.values()) / 50)
    assert r["category"] == (pan_category(r["tss"]) if scheme == "pan" else None)


def test_known_tss_values():
    lobes = _lobe_volume()
    lesions = _lesions_with_counts(lobes, {"RUL": 0, "RML": 50, "RLL": 250, "LUL": 500, "LLL": 750})
    chung = severity_report(lesions, None, AFFINE, lobes=lobes, scheme="chung")
    pan = severity_report(lesions, None, AFFINE, lobes=lobes, scheme="pan")
    assert chung["tss"] == 0 + 1 + 1 + 2 + 3
    assert pan["tss"] == 0 + 1 + 2 + 3 + 4 and pan["category"] == "moderate"


@pytest.mark.parametrize("preset", sorted(LOBE_PRESETS))
def test_presets_give_the_same_report(preset):
    lobes = _lobe_volume()
    counts = {"RUL": 10, "RML": 60, "RLL": 300, "LUL": 510, "LLL": 1000}
    lesions = _lesions_with_counts(lobes, counts)
    base = severity_report(lesions, None, AFFINE, lobes=lobes, scheme="pan")
    to_value = {name: value for value, name in LOBE_PRESETS[preset].items()}
    relabelled = np.zeros_like(lobes)
    for value, name in LOBE_PRESETS["slice2d"].items():
        relabelled[lobes == value] = to_value[name]
    if preset == "totalsegmentator":
        relabelled[15, 5, 12] = 90  # another organ, outside the lobes: ignored
    r = severity_report(lesions, None, AFFINE, lobes=relabelled, scheme="pan", lobe_labels=preset)
    assert r["regions"] == base["regions"]
    assert r["tss"] == base["tss"] == 1 + 2 + 3 + 4 + 5


def test_unknown_lobe_labels_raise():
    lobes = _lobe_volume()
    lobes[15, 5, 12] = 12
    with pytest.raises(ValueError, match=r"label values \[12\] .*'slice2d' preset.*--lobe-labels"):
        severity_report(np.zeros_like(lobes), None, AFFINE, lobes=lobes)
    with pytest.raises(ValueError, match="unknown lobe label preset"):
        severity_report(np.zeros_like(lobes), None, AFFINE, lobes=_lobe_volume(), lobe_labels="nnunet")


def test_errors_shape_and_empty_lung():
    lobes = _lobe_volume()
    with pytest.raises(ValueError, match="shape"):
        severity_report(np.zeros((5, 5, 5), np.uint8), _lungs_from(lobes), AFFINE)
    with pytest.raises(ValueError, match="lung mask is empty"):
        severity_report(np.zeros_like(lobes), np.zeros_like(lobes), AFFINE)
    with pytest.raises(ValueError, match="expected 0/1"):
        severity_report(np.full_like(lobes, 3), _lungs_from(lobes), AFFINE)


def test_lesions_outside_lungs_and_two_classes():
    lobes = _lobe_volume()
    lesions = np.zeros_like(lobes)
    lesions[0:10, :, 20:22] = 1  # 200 GGO voxels in RUL
    lesions[0:10, :, 22:23] = 2  # 100 consolidation voxels in RUL
    lesions[10:20, :, 12:14] = 2  # 200 voxels in the gap between LLL and LUL: outside the lungs
    r = severity_report(lesions, None, AFFINE, lobes=lobes, scheme="chung")
    voxel_ml = 0.7 * 0.7 * 2.5 / 1000
    assert r["lesion_outside_lungs_voxels"] == 200
    assert r["lesion_outside_lungs_ml"] == pytest.approx(200 * voxel_ml)
    assert r["regions"]["RUL"]["pi"] == pytest.approx(30.0)
    assert r["regions"]["RUL"]["ggo_pi"] == pytest.approx(20.0)
    assert r["regions"]["RUL"]["consolidation_ml"] == pytest.approx(100 * voxel_ml)
    assert r["ggo_ml"] == pytest.approx(200 * voxel_ml)
    assert r["consolidation_ml"] == pytest.approx(100 * voxel_ml)
    assert r["total_pi"] == pytest.approx(300 / 50)


@pytest.mark.parametrize("layout", ["fortran", "transposed view"])
def test_report_does_not_depend_on_memory_layout(layout):
    lobes = _lobe_volume()
    rng = np.random.default_rng(0)
    lesions = (rng.random(lobes.shape) < 0.2).astype(np.uint8) * rng.integers(1, 3, lobes.shape).astype(np.uint8)
    lungs = _lungs_from(lobes)
    expected = severity_report(lesions, lungs, AFFINE, scheme="chung")
    if layout == "fortran":
        other = np.asfortranarray(lungs)
    else:
        other = np.ascontiguousarray(np.transpose(lungs, (2, 0, 1))).transpose(1, 2, 0)
    assert severity_report(lesions, other, AFFINE, scheme="chung") == expected
    assert severity_report(np.asfortranarray(lesions), lungs, AFFINE, scheme="chung") == expected
    assert expected["lesion_classes"] == 2 and expected["total_pi"] > 0


def _zone_lungs():
    """Right lung on slices 0..8, left lung on slices 3..14 of a 2 mm z grid."""
    lungs = np.zeros((8, 4, 16), np.uint8)
    lungs[0:4, :, 0:9] = 1
    lungs[4:8, :, 3:15] = 2
    return lungs


def test_zones_extent_thirds_per_lung():
    affine = np.diag([1.5, 1.5, 2.0, 1.0])
    zones = lung_zones(_zone_lungs(), affine)
    per_slice_r = [int(np.unique(zones[0:4, :, k])[0]) for k in range(9)]
    per_slice_l = [int(np.unique(zones[4:8, :, k])[0]) for k in range(3, 15)]
    # Right: 0..16 mm, cuts at 5.33 and 10.67 mm. Left: 6..28 mm, cuts at 13.33 and 20.67 mm.
    assert per_slice_r == [3, 3, 3, 2, 2, 2, 1, 1, 1]
    assert per_slice_l == [6, 6, 6, 6, 5, 5, 5, 5, 4, 4, 4, 4]
    assert not zones[_zone_lungs() == 0].any()


def test_zones_follow_the_affine_not_the_array():
    # z axis flipped (index 0 is the top): upper zone at low indices.
    affine = np.diag([1.5, 1.5, -2.0, 1.0])
    lungs = _zone_lungs()
    zones = lung_zones(lungs, affine)
    assert [int(np.unique(zones[0:4, :, k])[0]) for k in range(9)] == [1, 1, 1, 2, 2, 2, 3, 3, 3]
    # A cut exactly on a voxel centre goes to the zone above: 7 slices, 0..12 mm, cuts at 4 and 8 mm.
    seven = np.zeros((2, 2, 7), np.uint8)
    seven[0] = 1
    seven[1] = 2
    z = lung_zones(seven, np.diag([1.0, 1.0, 2.0, 1.0]))
    assert z[0, 0].tolist() == [3, 3, 2, 2, 1, 1, 1]


def test_zones_volume_method():
    lungs = np.zeros((6, 6, 6), np.uint8)
    # Right lung cross-sections 36, 36, 12, 12, 12, 12 voxels (total 120): volume thirds cut after
    # slice 0 (36, closest to 40) and after slice 2 (84, closest to 80).
    lungs[:, :, 0:2] = 1
    lungs[0:2, :, 2:6] = 1
    z = lung_zones(lungs, np.eye(4), method="volume")
    assert [int(np.unique(z[..., k][lungs[..., k] > 0])[0]) for k in range(6)] == [3, 2, 2, 1, 1, 1]
    assert lung_zones(lungs, np.eye(4), method="extent")[0, 0].tolist() == [3, 3, 2, 2, 1, 1]


def test_zone_schemes_and_fallback():
    lobes = _lobe_volume()
    lungs = _lungs_from(lobes)
    lesions = np.zeros_like(lobes)
    lesions[0:10, :, 0:10] = 1  # the whole RLL = right lower third of the right lung (z 0..29)
    z6 = severity_report(lesions, lungs, AFFINE, scheme="zones6")
    assert z6["regions_kind"] == "zones" and z6["tss_max"] == 24 and z6["note"] is None
    assert z6["regions"]["R_lower"]["pi"] == pytest.approx(100.0) and z6["regions"]["R_lower"]["score"] == 4
    assert z6["tss"] == 4
    # zones6 uses zones even with a lobe map (derived from the lobe map's lungs when lungs is None)
    assert severity_report(lesions, None, AFFINE, lobes=lobes, scheme="zones6")["regions"] == z6["regions"]
    chung = severity_report(lesions, lungs, AFFINE, scheme="chung")
    assert chung["regions_kind"] == "zones" and chung["tss_max"] == 24 and "no lobe map" in chung["note"]
    pan = severity_report(lesions, lungs, AFFINE, scheme="pan")
    assert pan["tss_max"] == 30 and pan["category"] is None and pan["tss"] == 5


def test_write_report_and_cohort_csv(tmp_path):
    lobes = _lobe_volume()
    lobes[lobes == 2] = 0  # an empty RML: pi undefined
    lesions = _lesions_with_counts(lobes, {"RUL": 300})
    r1 = severity_report(lesions, None, AFFINE, lobes=lobes, scheme="pan", case="a")
    assert math.isnan(r1["regions"]["RML"]["pi"]) and r1["regions"]["RML"]["score"] == 0
    r2 = severity_report(lesions, None, AFFINE, lobes=_lobe_volume(), scheme="pan", case="b")
    path = write_report(r1, tmp_path / "a.json")
    loaded = json.loads(path.read_text())
    assert loaded["regions"]["RML"]["pi"] is None and loaded["tss"] == 3 and loaded["category"] == "mild"
    write_cohort_csv([r1, r2], tmp_path / "cohort.csv")
    with open(tmp_path / "cohort.csv") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0])[:8] == ["case", "scheme", "total_pi", "tss", "tss_max", "category", "lung_ml", "lesion_ml"]
    assert "LLL_score" in rows[0] and rows[0]["RML_pi"] == "" and rows[1]["RML_pi"] == "0.0"
    assert [r["RUL_score"] for r in rows] == ["3", "3"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_severity_figure_writes_png(tmp_path):
    lobes = _lobe_volume()
    lungs = _lungs_from(lobes)
    image = np.where(lungs > 0, -850, 40).astype(np.int16)
    lesions = _lesions_with_counts(lobes, {"RUL": 300, "LLL": 800})
    r = severity_report(lesions, lungs, AFFINE, lobes=lobes, scheme="pan", case="fig")
    out = severity_figure(image, lungs, lesions, AFFINE, r, tmp_path / "fig.png", regions_map=lobes)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _has_colour(png: Path, hex_colour: str) -> bool:
    import matplotlib.image

    rgb = (matplotlib.image.imread(png)[..., :3] * 255).round().astype(int)
    want = [int(hex_colour[i:i + 2], 16) for i in (1, 3, 5)]
    return bool((rgb == want).all(axis=-1).any())


def test_severity_figure_stacks_ground_glass_and_consolidation(tmp_path):
    """Two-class lesion maps: the bars show ground-glass and consolidation apart; binary maps do not."""
    from slice2d.report import CONSOLIDATION_COLOUR, GGO_COLOUR

    lobes = _lobe_volume()
    lungs = _lungs_from(lobes)
    image = np.where(lungs > 0, -850, 40).astype(np.int16)
    lesions = _lesions_with_counts(lobes, {"RUL": 300, "LLL": 800})
    two = lesions.copy()
    two[(lesions > 0) & (lobes == 5)] = 2  # LLL's lesion is consolidation, RUL's ground-glass
    pngs = {}
    for name, les in (("binary", lesions), ("two", two)):
        r = severity_report(les, lungs, AFFINE, lobes=lobes, scheme="pan", case=name)
        pngs[name] = severity_figure(image, lungs, les, AFFINE, r, tmp_path / f"{name}.png")
    assert _has_colour(pngs["two"], GGO_COLOUR) and _has_colour(pngs["two"], CONSOLIDATION_COLOUR)
    assert not _has_colour(pngs["binary"], GGO_COLOUR) and _has_colour(pngs["binary"], CONSOLIDATION_COLOUR)


@needs_data
def test_zones_agree_with_copdgene_reference():
    lungs_img = nib.load(str(DATA / "copdgene-10002K-lungs-64.nii.gz"))
    lungs = np.asanyarray(lungs_img.dataobj)
    ref = np.asanyarray(nib.load(str(DATA / "copdgene-10002K-zones-64.nii.gz")).dataobj)
    inside = lungs > 0

    def agreement(**kw):
        return float((lung_zones(lungs, lungs_img.affine, **kw)[inside] == ref[inside]).mean())

    # Measured: extent per lung 0.867, volume per lung 0.950, volume joint 1.000 (the CIP convention).
    assert agreement() >= 0.86
    assert agreement(method="volume") >= 0.94
    assert agreement(method="volume", joint=True) == 1.0


@pytest.mark.parametrize("method", ["extent", "volume"])
@pytest.mark.parametrize("oblique", [False, True])
def test_zone_counts_of_the_report_match_zones_of_the_whole_volume(method, oblique):
    """The report works on the box around the maps' content; its zones are those of the whole volume."""
    rng = np.random.default_rng(3)
    lungs = np.zeros((30, 26, 40), np.uint8)
    lungs[6:14, 5:20, 7:33] = 1
    lungs[16:25, 4:21, 11:36] = 2
    lesions = ((rng.random(lungs.shape) < 0.3) & (lungs > 0)).astype(np.uint8)
    lesions[2, 2, 38] = 1  # outside the lungs: widens the box
    affine = np.array([[1.2, 0, 0, -30.0], [0, 0.9, 0.15 if oblique else 0, 20.0], [0, 0.05 if oblique else 0, 2.5, -70.0],
                       [0, 0, 0, 1]])
    report = severity_report(lesions, lungs, affine, scheme="zones6", zone_method=method)
    zones = lung_zones(lungs, affine, method)
    for value, name in ZONE_NAMES.items():
        assert report["regions"][name]["region_voxels"] == np.count_nonzero(zones == value)
        assert report["regions"][name]["lesion_voxels"] == np.count_nonzero((zones == value) & (lesions > 0))
    assert report["lesion_outside_lungs_voxels"] == 1
