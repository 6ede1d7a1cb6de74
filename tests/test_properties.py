"""Property-based tests (hypothesis): slicing/reassembly and metrics over random shapes, spacings,
orientations and label contents. Bounded: a few dozen examples each, seconds in all."""

from __future__ import annotations

import nibabel as nib
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from slice2d.dataset import split_cases
from slice2d.io import from_canonical, geometry_of, to_canonical
from slice2d.metrics import binary_metrics
from slice2d.slicing import labels_to_slices, plan_slices, slices_to_labels

SETTINGS = settings(max_examples=40, deadline=None)


@st.composite
def oriented_labels(draw):
    """A random label volume with a random axis permutation, flips and anisotropic spacing."""
    shape = tuple(draw(st.integers(2, 40)) for _ in range(3))
    spacing = [draw(st.floats(0.3, 5.0)) for _ in range(3)]
    perm = draw(st.permutations([0, 1, 2]))
    signs = [draw(st.sampled_from([-1.0, 1.0])) for _ in range(3)]
    affine = np.eye(4)
    affine[:3, :3] = 0
    for axis in range(3):
        affine[perm[axis], axis] = signs[axis] * spacing[axis]
    affine[:3, 3] = [draw(st.floats(-200, 200)) for _ in range(3)]
    labels = draw(arrays(np.uint8, shape, elements=st.integers(0, 4)))
    return labels, affine


@SETTINGS
@given(oriented_labels(), st.sampled_from([32, 64, 128]), st.sampled_from([0.0, 20.0, 350.0]))
def test_orientation_and_slicing_round_trip(case, size, field_mm):
    labels, affine = case
    geometry = geometry_of(nib.Nifti1Image(labels, affine))
    canonical = to_canonical(labels, geometry)
    np.testing.assert_array_equal(from_canonical(canonical, geometry), labels)
    spacing = geometry.canonical_spacing
    g = plan_slices(canonical.shape[0], canonical.shape[1], size, (spacing[0], spacing[1]), field_mm)
    assert 1 <= g.new_rows <= size and 1 <= g.new_cols <= size
    assert 0 <= g.top and g.top + g.new_rows <= size and 0 <= g.left and g.left + g.new_cols <= size
    slices = labels_to_slices(canonical, g)
    assert slices.shape == (canonical.shape[2], size, size)
    back = from_canonical(slices_to_labels(slices, g), geometry)
    assert back.shape == labels.shape
    if g.new_rows >= g.rows and g.new_cols >= g.cols:   # nothing was shrunk: exact
        np.testing.assert_array_equal(back, labels)
    assert set(np.unique(back)) <= set(np.unique(labels))


masks = arrays(bool, st.tuples(st.integers(2, 12), st.integers(2, 12), st.integers(2, 8)))
spacings = st.tuples(*[st.floats(0.5, 4.0)] * 3)


@SETTINGS
@given(masks, spacings)
def test_metrics_of_a_mask_with_itself(mask, spacing):
    m = binary_metrics(mask, mask, spacing, 1.0)
    assert m["dice"] == 1.0 and m["iou"] == 1.0 and m["surface_dice"] == 1.0 and m["surface_dice_area"] == 1.0
    assert m["hd95_mm"] == 0.0 and m["assd_mm"] == 0.0
    assert m["pred_ml"] == m["ref_ml"]


@SETTINGS
@given(st.data(), spacings)
def test_metrics_are_bounded_and_symmetric(data, spacing):
    shape = data.draw(st.tuples(st.integers(2, 12), st.integers(2, 12), st.integers(2, 8)))
    a = data.draw(arrays(bool, shape))
    b = data.draw(arrays(bool, shape))
    ab, ba = binary_metrics(a, b, spacing, 2.0), binary_metrics(b, a, spacing, 2.0)
    for key in ("dice", "iou", "surface_dice", "surface_dice_area", "hd95_mm", "assd_mm"):
        assert np.isnan(ab[key]) and np.isnan(ba[key]) or np.isclose(ab[key], ba[key]), key
    assert 0.0 <= ab["dice"] <= 1.0 and 0.0 <= ab["iou"] <= ab["dice"] + 1e-12
    if a.any() or b.any():
        assert np.isclose(ab["iou"], ab["dice"] / (2 - ab["dice"]))
    if a.any() and b.any():
        assert ab["hd95_mm"] >= 0 and ab["assd_mm"] >= 0
        diagonal = float(np.sqrt(sum((n * s) ** 2 for n, s in zip(shape, spacing, strict=True))))
        assert ab["hd95_mm"] <= diagonal + 1e-6


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10_000), kind=st.sampled_from(["RAS", "LPS", "PIL"]),
       method=st.sampled_from(["extent", "volume"]), joint=st.booleans())
def test_per_slice_zones_equal_voxelwise_zones(seed, kind, method, joint):
    """The fast per-slice zone cut gives exactly the voxel-by-voxel result on axial series."""
    from conftest import make_affine

    from slice2d.zones import _lung_zones_voxelwise, lung_zones

    rng = np.random.default_rng(seed)
    lungs = rng.choice(np.array([0, 1, 2], np.uint8), size=(9, 11, 13), p=[0.5, 0.25, 0.25])
    affine = make_affine(kind, spacing=tuple(rng.uniform(0.5, 3.0, 3)))
    np.testing.assert_array_equal(lung_zones(lungs, affine, method, joint),
                                  _lung_zones_voxelwise(lungs, affine, method, joint))


@settings(max_examples=60, deadline=None)
@given(n_patients=st.integers(6, 30), folds=st.integers(2, 5), val_fraction=st.floats(0.05, 0.5), seed=st.integers(0, 99))
def test_cross_validation_folds_never_leak_into_training_or_validation(n_patients, folds, val_fraction, seed):
    # two cases per patient, so that a split by case rather than by patient would show
    patients = {f"p{p}_{k}": f"p{p}" for p in range(n_patients) for k in range(2)}
    tested = []
    for fold in range(folds):
        s = split_cases(patients, val_fraction, folds, fold, seed)
        sides = [{patients[c] for c in part} for part in (s.train, s.val, s.test)]
        assert all(sides) and not (sides[0] & sides[1] or sides[0] & sides[2] or sides[1] & sides[2])
        assert sorted(s.train + s.val + s.test) == sorted(patients)
        tested += s.test
    assert sorted(tested) == sorted(patients)  # every case is tested exactly once over the folds


@settings(max_examples=30, deadline=None)
@given(n_patients=st.integers(7, 30), folds=st.integers(1, 5), seed=st.integers(0, 99))
def test_without_validation_every_patient_outside_the_test_fold_trains(n_patients, folds, seed):
    patients = {f"p{p}_{k}": f"p{p}" for p in range(n_patients) for k in range(2)}
    for fold in range(folds):
        s = split_cases(patients, 0.0, folds, fold, seed)
        assert s.val == [] and sorted(s.train + s.test) == sorted(patients)
        assert not {patients[c] for c in s.train} & {patients[c] for c in s.test}
        # the same test fold as with a validation split
        assert s.test == split_cases(patients, 0.2, folds, fold, seed).test
