"""Synthetic phantoms: determinism, label consistency, anatomy in world space, HU ranges, files."""

import gzip
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from nibabel.affines import apply_affine

from slice2d.synth import Phantom, case_seed, make_phantom, write_phantoms

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
