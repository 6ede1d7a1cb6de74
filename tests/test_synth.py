"""Synthetic phantoms: determinism, label consistency, anatomy in world space, HU ranges, files, whole scans."""

import gzip
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from nibabel.affines import apply_affine
from scipy import ndimage

from slice2d.synth import Phantom, case_seed, make_phantom, write_phantoms
from slice2d.synth_scan import AIRWAY, BOWEL_GAS, CONFOUNDER_LABELS, OUTSIDE, STOMACH_GAS, TABLE, SlabPlan

SHAPE = (64, 64, 32)


@pytest.fixture(scope="module")
def ph() -> Phantom:
    return make_phantom(SHAPE, seed=1, lesion_free=False)


def world_centroid(mask: np.ndarray, affine: np.ndarray) -> np.ndarray:
    return apply_affine(affine, np.argwhere(mask).mean(0))


def test_same_seed_same_phantom_other_seed_differs(ph):
    again = make_phantom(SHAPE, seed=1, lesion_free=False)
    for name in ("image", "lungs", "lobes", "lesions", "affine"):
        np.testing.assert_array_equal(getattr(ph, name), getattr(again, name))
    other = make_phantom(SHAPE, seed=2, lesion_free=False)
    assert not np.array_equal(ph.image, other.image)
    assert not np.array_equal(ph.lungs, other.lungs)


def test_shapes_dtypes_and_label_values(ph):
    assert ph.image.shape == ph.lungs.shape == ph.lobes.shape == ph.lesions.shape == SHAPE
    assert ph.image.dtype == np.float32
    assert ph.lungs.dtype == ph.lobes.dtype == ph.lesions.dtype == np.uint8
    assert ph.affine.shape == (4, 4) and ph.affine.dtype == np.float64
    assert set(np.unique(ph.lungs)) == {0, 1, 2}
    assert set(np.unique(ph.lobes)) == {0, 1, 2, 3, 4, 5}
    assert set(np.unique(ph.lesions)) <= {0, 1, 2} and ph.lesions.any()
    assert ph.image.min() >= -1024 and ph.image.max() > 300  # bone is present


def test_lobes_partition_each_lung(ph):
    np.testing.assert_array_equal(ph.lobes > 0, ph.lungs > 0)
    assert np.all(np.isin(ph.lobes[ph.lungs == 1], [1, 2, 3]))
    assert np.all(np.isin(ph.lobes[ph.lungs == 2], [4, 5]))
    assert not ph.lesions[ph.lungs == 0].any()


def test_orientation_is_lps_stored_with_anatomy_on_the_right_side(ph):
    assert nib.aff2axcodes(ph.affine) == ("L", "P", "S")
    centre = apply_affine(ph.affine, (np.array(SHAPE) - 1) / 2)
    assert abs(centre[0]) < 1e-6 and abs(centre[1]) < 1e-6
    # RAS+: +x is the patient's right, so the right lung (label 1) has the larger world x.
    right, left = world_centroid(ph.lungs == 1, ph.affine), world_centroid(ph.lungs == 2, ph.affine)
    assert right[0] > 0 > left[0]
    assert (ph.lungs == 2).sum() < (ph.lungs == 1).sum()  # the heart takes room from the left lung
    z = {lab: world_centroid(ph.lobes == lab, ph.affine)[2] for lab in range(1, 6)}
    assert z[1] > z[2] > z[3]  # RUL above RML above RLL
    assert z[4] > z[5]
    # The spine is posterior: bone voxels near the midline sit at negative world y (RAS+).
    bone = ph.image > 300
    assert world_centroid(bone, ph.affine)[1] < 0


def test_hounsfield_ranges(ph):
    parenchyma = (ph.lungs > 0) & (ph.lesions == 0)
    assert -900 <= np.median(ph.image[parenchyma]) <= -780
    assert -700 <= ph.image[ph.lesions == 1].mean() <= -300
    assert -150 <= ph.image[ph.lesions == 2].mean() <= 80
    corner = ph.image[:4, :4, :]
    assert abs(corner.mean() + 1000) < 15  # air outside the body
    assert 15 < corner.std() < 45  # seeded CT noise


def test_lesion_free_forced_and_drawn():
    free = make_phantom(SHAPE, seed=1, lesion_free=True)
    sick = make_phantom(SHAPE, seed=1, lesion_free=False)
    assert not free.lesions.any()
    np.testing.assert_array_equal(free.lungs, sick.lungs)  # forcing keeps the anatomy
    drawn = [make_phantom((48, 48, 24), seed=s).lesions.any() for s in range(10)]
    assert not all(drawn) and any(drawn)


@pytest.mark.parametrize(("shape", "spacing"), [((64, 64, 32), (1.5, 1.5, 4.0)), ((61, 53, 27), (2.5, 2.5, 5.0))])
def test_anisotropic_spacing_and_odd_shapes(shape, spacing):
    p = make_phantom(shape, spacing, seed=5, lesion_free=False)
    assert p.image.shape == shape
    np.testing.assert_allclose(np.abs(np.diag(p.affine)[:3]), spacing)
    assert set(np.unique(p.lobes)) == {0, 1, 2, 3, 4, 5}
    assert p.lesions.any() and not p.lesions[p.lungs == 0].any()
    assert world_centroid(p.lungs == 1, p.affine)[0] > 0


def test_bad_arguments_raise_with_the_value():
    with pytest.raises(ValueError, match="shape"):
        make_phantom((64, 64))
    with pytest.raises(ValueError, match="spacing"):
        make_phantom(SHAPE, spacing=(1.0, 0.0, 1.0))


def test_write_phantoms(tmp_path: Path):
    seen = []
    paths = write_phantoms(tmp_path, 2, shape=(48, 48, 24), seed=7, progress=seen.append)
    assert seen == [0, 1]
    assert [p.name for p in paths] == ["phantom_000.nii.gz", "phantom_001.nii.gz"]
    for name in ("images", "lungs", "lobes", "lesions"):
        assert sorted(p.name for p in (tmp_path / name).iterdir()) == [p.name for p in paths]
    expected = make_phantom((48, 48, 24), seed=case_seed(7, 1))
    img = nib.load(paths[1])
    assert img.shape == (48, 48, 24)
    np.testing.assert_allclose(img.affine, expected.affine)
    np.testing.assert_allclose(img.get_fdata(), np.rint(expected.image), atol=0.5)
    for name in ("lungs", "lobes", "lesions"):
        lab = nib.load(tmp_path / name / "phantom_001.nii.gz")
        assert lab.get_data_dtype() == np.uint8
        # nibabel blanks scaling in a loaded header; the file itself must say 1 / 0.
        assert (lab.dataobj.slope, lab.dataobj.inter) == (1.0, 0.0)
        with gzip.open(tmp_path / name / "phantom_001.nii.gz") as fh:
            raw = nib.Nifti1Header.from_fileobj(fh)
        assert (float(raw["scl_slope"]), float(raw["scl_inter"])) == (1.0, 0.0)
        np.testing.assert_allclose(lab.affine, img.affine)
        np.testing.assert_array_equal(np.asanyarray(lab.dataobj), getattr(expected, name))
    assert not list(tmp_path.rglob("*.part"))
    # Deterministic for a seed, different across seeds.
    again = write_phantoms(tmp_path / "again", 1, shape=(48, 48, 24), seed=7)
    assert again[0].read_bytes() == paths[0].read_bytes()
    other = write_phantoms(tmp_path / "other", 1, shape=(48, 48, 24), seed=8)
    assert other[0].read_bytes() != paths[0].read_bytes()


# Whole scans: neck to upper abdomen, on the table, with air that is never lung.

WS_SHAPE, WS_SPACING = (96, 96, 48), (3.5, 3.5, 8.0)


@pytest.fixture(scope="module")
def whole() -> Phantom:
    return make_phantom(WS_SHAPE, WS_SPACING, seed=3, lesion_free=False, whole_scan=True)


def lung_slices(p: Phantom) -> np.ndarray:
    return np.nonzero(p.lungs.any(axis=(0, 1)))[0]


def test_confounder_labels_are_the_documented_ones():
    assert CONFOUNDER_LABELS == {1: "outside air", 2: "table", 3: "trachea and main bronchi", 4: "stomach gas",
                                 5: "bowel gas"}


def test_whole_scan_truth_lungs_hold_no_confounder(whole):
    conf = whole.confounders
    assert conf.shape == WS_SHAPE and conf.dtype == np.uint8
    for label in CONFOUNDER_LABELS:
        assert (conf == label).sum() >= 20, CONFOUNDER_LABELS[label]  # each one is really there
        assert not whole.lungs[conf == label].any(), CONFOUNDER_LABELS[label]
    np.testing.assert_array_equal(whole.lobes > 0, whole.lungs > 0)
    assert whole.lesions.any() and not whole.lesions[whole.lungs == 0].any()
    # Abdominal gas is walled off from the lungs by tissue: not even a face-neighbour of a lung voxel.
    gas = np.isin(conf, (STOMACH_GAS, BOWEL_GAS))
    assert not (ndimage.binary_dilation(gas) & (whole.lungs > 0)).any()


def test_whole_scan_confounders_are_air_in_the_image(whole):
    img, conf = whole.image, whole.confounders
    for label in (OUTSIDE, AIRWAY, STOMACH_GAS, BOWEL_GAS):
        assert abs(np.median(img[conf == label]) + 1000) < 30, CONFOUNDER_LABELS[label]
    table = conf == TABLE
    assert (img[table] > 100).mean() > 0.1  # a dense shell ...
    assert (img[table] < -900).mean() > 0.3  # ... around an air core
    # The table lies behind the patient (RAS+ y < 0 is posterior), apart from the body by air.
    body = ~np.isin(conf, (OUTSIDE, TABLE))
    assert world_centroid(table, whole.affine)[1] < world_centroid(body, whole.affine)[1]
    inplane = np.zeros((3, 3, 3), bool)
    inplane[:, :, 1] = ndimage.generate_binary_structure(2, 1)
    assert not (ndimage.binary_dilation(table, inplane) & body).any()
    # Abdominal gas is inside the body: no in-plane contact with the air around the patient.
    gas = np.isin(conf, (STOMACH_GAS, BOWEL_GAS))
    assert not (ndimage.binary_dilation(gas, inplane) & (conf == OUTSIDE)).any()


def test_whole_scan_has_neck_above_and_abdomen_below_the_lungs(whole):
    conf, zs = whole.confounders, lung_slices(whole)
    top, bottom = zs[-1], zs[0]
    assert WS_SHAPE[2] - 1 - top >= 5 and bottom >= 5  # lung-free slices at both ends
    assert not whole.lungs[:, :, top + 1:].any() and not whole.lungs[:, :, :bottom].any()
    # Every slice above the apex holds the trachea: air, and not lung.
    for k in range(top + 1, WS_SHAPE[2]):
        assert (conf[:, :, k] == AIRWAY).sum() >= 2, k
    # The neck is narrower than the chest; the shoulders, above the apex, are wider.
    body = ~np.isin(conf, (OUTSIDE, TABLE))
    width = body.any(axis=1).sum(axis=0)  # voxels along x per slice
    mid = (top + bottom) // 2
    assert width[-1] < 0.7 * width[mid]
    assert width[top + 1:].max() > 1.1 * width[mid]
    # Stomach gas: on the patient's left (RAS+ x < 0), under the lung of its own column.
    stomach = conf == STOMACH_GAS
    assert world_centroid(stomach, whole.affine)[0] < 0
    columns = stomach.any(axis=2) & whole.lungs.any(axis=2)
    z = np.arange(WS_SHAPE[2])
    gas_top = np.where(stomach, z, -1).max(axis=2)
    lung_bottom = np.where(whole.lungs > 0, z, WS_SHAPE[2]).min(axis=2)
    assert columns.any() and np.all(gas_top[columns] < lung_bottom[columns])
    assert (conf[:, :, :bottom] == BOWEL_GAS).any()


def test_whole_scan_same_seed_same_phantom_other_seed_differs(whole):
    again = make_phantom(WS_SHAPE, WS_SPACING, seed=3, lesion_free=False, whole_scan=True)
    for name in ("image", "lungs", "lobes", "lesions", "confounders", "affine"):
        np.testing.assert_array_equal(getattr(whole, name), getattr(again, name))
    other = make_phantom(WS_SHAPE, WS_SPACING, seed=4, lesion_free=False, whole_scan=True)
    assert not np.array_equal(whole.confounders, other.confounders)


def test_defaults_stay_thorax_only(ph):
    # The demo's phantoms: thorax filling the volume, no table or abdominal gas.
    assert set(np.unique(ph.confounders)) == {0, OUTSIDE, AIRWAY}
    assert len(lung_slices(ph)) > 0.7 * SHAPE[2]
    tabled = make_phantom((48, 48, 24), seed=1, table=True)
    assert (tabled.confounders == TABLE).any() and not np.isin(tabled.confounders, (4, 5)).any()
    assert not (make_phantom((48, 48, 24), seed=1, whole_scan=True, table=False).confounders == TABLE).any()


@pytest.mark.parametrize(("thickness", "substeps"), [(5.0, 5), (10.0, 3), (2.5, 9), (0.1, 9)])
def test_slab_plan_averages_a_box_profile(thickness, substeps):
    plan = SlabPlan.make(12, 5.0, thickness)
    assert plan.substeps == substeps and plan.weights.sum() == pytest.approx(1.0)
    np.testing.assert_allclose(plan.weights, plan.weights[::-1])
    z = (np.arange(plan.fine) - (plan.fine - 1) / 2) * plan.step
    fine = np.broadcast_to(z, (2, 2, plan.fine)).astype(np.float32)
    centres = (np.arange(12) - 5.5) * 5.0
    np.testing.assert_allclose(plan.centres(fine, 12)[0, 0], centres, atol=1e-4)
    np.testing.assert_allclose(plan.average(fine, 12)[0, 0], centres, atol=1e-3)  # a ramp keeps its centre
    # A step between air and tissue: a thick slice on the edge reads in between, a thin one does not.
    edge = plan.average(np.where(fine > 0, 0.0, -1000.0).astype(np.float32), 12)[0, 0]
    ahead = np.clip((centres + thickness / 2) / thickness, 0, 1) * 1000 - 1000
    np.testing.assert_allclose(edge, ahead, atol=1000 * plan.step / thickness / 2 + 1e-3)


def test_thick_slices_keep_spacing_and_show_partial_volume():
    shape, spacing = (64, 64, 24), (5.0, 5.0, 16.0)
    thick = make_phantom(shape, spacing, seed=1, whole_scan=True, slice_thickness=16.0)
    thin = make_phantom(shape, spacing, seed=1, whole_scan=True)
    assert thick.image.shape == thick.lungs.shape == thick.confounders.shape == shape
    np.testing.assert_allclose(thick.affine, thin.affine)
    np.testing.assert_allclose(np.abs(np.diag(thick.affine)[:3]), spacing)
    assert nib.aff2axcodes(thick.affine) == ("L", "P", "S")
    again = make_phantom(shape, spacing, seed=1, whole_scan=True, slice_thickness=16.0)
    np.testing.assert_array_equal(thick.image, again.image)
    for label in CONFOUNDER_LABELS:
        assert not thick.lungs[thick.confounders == label].any()
    assert not thick.lesions[thick.lungs == 0].any()
    # Averaging 16 mm of anatomy mixes air and tissue at every edge along z.
    between = [((p.image > -600) & (p.image < -200)).mean() for p in (thin, thick)]
    assert between[1] > 2 * between[0]
    with pytest.raises(ValueError, match="slice_thickness"):
        make_phantom(shape, spacing, slice_thickness=0.0)


def test_write_whole_scan_phantoms_and_cli(tmp_path: Path):
    from typer.testing import CliRunner

    from slice2d.cli import app

    result = CliRunner().invoke(app, ["synth", str(tmp_path / "ws"), "--cases", "1", "--shape", "48", "48", "24",
                                      "--spacing", "7", "7", "16", "--whole-scan", "--slice-thickness", "16", "-q"])
    assert result.exit_code == 0, result.output
    expected = make_phantom((48, 48, 24), (7.0, 7.0, 16.0), seed=case_seed(0, 0), whole_scan=True,
                            slice_thickness=16.0)
    conf = nib.load(tmp_path / "ws" / "confounders" / "phantom_000.nii.gz")
    assert conf.get_data_dtype() == np.uint8
    np.testing.assert_allclose(conf.affine, expected.affine)
    np.testing.assert_array_equal(np.asanyarray(conf.dataobj), expected.confounders)
    np.testing.assert_array_equal(np.asanyarray(nib.load(tmp_path / "ws" / "lungs" / "phantom_000.nii.gz").dataobj),
                                  expected.lungs)
    write_phantoms(tmp_path / "plain", 1, shape=(48, 48, 24))
    assert not (tmp_path / "plain" / "confounders").exists()  # default sets keep their four maps
    bad = CliRunner().invoke(app, ["synth", str(tmp_path / "bad"), "--slice-thickness", "-1"])
    assert bad.exit_code == 2 and "slice-thickness" in bad.output


@pytest.mark.parametrize("thickness", [None, 8.0])
def test_builtin_lung_extraction_leaves_out_the_confounders(thickness):
    """extract_lungs_nifti on a whole scan: no lung in stomach or bowel gas, the table, the neck."""
    from slice2d.lungs import extract_lungs_nifti

    p = make_phantom(WS_SHAPE, WS_SPACING, seed=3, whole_scan=True, slice_thickness=thickness)
    hu = np.rint(p.image).astype(np.int16)
    pred = extract_lungs_nifti(nib.Nifti1Image(hu, p.affine)) > 0
    ml = float(np.prod(WS_SPACING)) / 1000
    top = lung_slices(p)[-1]
    neck = np.zeros(WS_SHAPE, bool)
    neck[:, :, top + 1:] = True
    wrong = {name: int((pred & mask).sum()) for name, mask in (
        ("stomach gas", p.confounders == STOMACH_GAS), ("bowel gas", p.confounders == BOWEL_GAS),
        ("table", p.confounders == TABLE), ("outside air", p.confounders == OUTSIDE),
        ("neck trachea", (p.confounders == AIRWAY) & neck), ("above the apex", neck))}
    assert not any(wrong.values()), {k: f"{v} voxels, {v * ml:.1f} mL" for k, v in wrong.items()}
    truth = p.lungs > 0
    assert 2 * (pred & truth).sum() / (pred.sum() + truth.sum()) >= 0.95
