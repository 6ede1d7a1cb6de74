"""Geometry: canonical orientation, aspect-preserving resize, and exact prepare -> reassemble round trips."""

from __future__ import annotations

import cv2
import nibabel as nib
import numpy as np
import pytest
from conftest import make_affine, need_samples, write_case

from slice2d.config import Config, DataConfig
from slice2d.dataset import SliceFile, prepare
from slice2d.io import geometry_of, to_canonical
from slice2d.slicing import labels_to_slices, plan_slices, probabilities_to_labels, probabilities_to_slice, slices_to_labels


def identity_config(size: int = 128, empty_fraction: float = 0.5) -> Config:
    """Keeps label values as they are (up to 255), so a round trip must return them unchanged."""
    return Config(data=DataConfig(size=size, classes=tuple(f"c{i}" for i in range(256)), label_map=None,
                                  empty_fraction=empty_fraction))


def test_prepare_then_reassemble_gives_labels_back_exactly(cases_dir, tmp_path):
    out = prepare(cases_dir / "images", cases_dir / "labels", tmp_path / "s.h5", identity_config())
    with SliceFile(out) as slices:
        assert slices.cases == ["lps", "oblique", "pil", "ras"]
        for case in slices.cases:
            ref = nib.load(cases_dir / "labels" / f"{case}.nii.gz")
            back = slices.reassemble_labels(case)
            geometry, _ = slices.geometry(case)
            assert back.shape == ref.shape
            assert np.allclose(geometry.affine, ref.affine)
            np.testing.assert_array_equal(back, np.asarray(ref.dataobj))


def test_empty_slices_are_dropped_but_reassembly_is_still_exact(tmp_path):
    img, lab = write_case(tmp_path, "a", (31, 27, 40), make_affine("LPS"), seed=3)
    labels = np.asarray(nib.load(lab).dataobj)
    n_empty = int((~labels.any(axis=(0, 1))).sum())
    assert n_empty > 4
    out = prepare(tmp_path / "images", tmp_path / "labels", tmp_path / "s.h5", identity_config(empty_fraction=0.0))
    with SliceFile(out) as slices:
        assert len(slices.h5["cases/a/z"]) == labels.shape[2] - n_empty
        np.testing.assert_array_equal(slices.reassemble_labels("a"), labels)


def test_same_anatomy_in_ras_and_lps_gives_the_same_canonical_array():
    rng = np.random.default_rng(0)
    ras = rng.integers(0, 5, (7, 9, 4)).astype(np.uint8)
    lps = ras[::-1, ::-1, :]  # the same world content stored flipped in x and y
    a_ras = make_affine("RAS", (1, 1, 1))
    flip = np.diag([-1.0, -1.0, 1.0, 1.0])
    flip[:3, 3] = [6, 8, 0]
    a_lps = a_ras @ flip
    c1 = to_canonical(ras, geometry_of(nib.Nifti1Image(ras, a_ras)))
    c2 = to_canonical(lps, geometry_of(nib.Nifti1Image(lps, a_lps)))
    np.testing.assert_array_equal(c1, c2)
    # canonical axis 0 runs anterior -> posterior, axis 1 right -> left (radiological display)
    assert c1.shape == (9, 7, 4)
    np.testing.assert_array_equal(c1[:, :, 0], ras[::-1, ::-1, 0].T)


@pytest.mark.parametrize("rows, cols, spacing, expected", [
    (64, 64, (1, 1), (128, 128)),
    (256, 128, (1, 1), (128, 64)),
    (100, 100, (2.0, 1.0), (128, 64)),     # anisotropic pixels keep their physical proportions
    (512, 512, (0.7, 0.7), (128, 128)),
    (3, 200, (1, 1), (2, 128)),
])
def test_plan_keeps_physical_aspect_and_centres(rows, cols, spacing, expected):
    g = plan_slices(rows, cols, 128, spacing)
    assert (g.new_rows, g.new_cols) == expected
    assert g.top == (128 - expected[0]) // 2 and g.left == (128 - expected[1]) // 2


@pytest.mark.parametrize("rows, cols, spacing, field, expected", [
    (64, 64, (4.2, 4.2), 350, (98, 98)),     # a 269 mm slice on a 350 mm canvas: padded, not enlarged
    (512, 512, (0.7, 0.7), 350, (128, 128)),  # 358 mm: wider than the field, fills the canvas as before
    (100, 50, (2.0, 2.0), 300, (85, 43)),
])
def test_a_slice_narrower_than_the_field_keeps_the_fields_scale(rows, cols, spacing, field, expected):
    g = plan_slices(rows, cols, 128, spacing, field)
    assert (g.new_rows, g.new_cols) == expected
    assert g.top == (128 - expected[0]) // 2 and g.left == (128 - expected[1]) // 2
    # the pixel's size on the canvas is the field's, whatever the slice's own extent
    assert g.new_rows / (rows * spacing[0]) == pytest.approx(128 / max(field, rows * spacing[0], cols * spacing[1]),
                                                             rel=0.02)


def test_the_field_pads_hu_volumes_only_and_labels_still_round_trip():
    """A narrow HU volume lands smaller on the canvas, its CLAHE computed with air around it out to
    the field; 8-bit slices (no pixel size) ignore the field; labels come back voxel for voxel."""
    from slice2d.config import IntensityConfig
    from slice2d.slicing import clahe_for, equalise_plane, normalise, volume_to_network

    rng = np.random.default_rng(3)
    image = np.asarray(rng.integers(-1000, 400, (40, 40, 3)), dtype=np.int16)
    affine = np.diag([4.0, 4.0, 5.0, 1.0])  # 160 mm across
    geometry = geometry_of(nib.Nifti1Image(image, affine))
    intensity = IntensityConfig(mode="clahe")
    shape, geom, slices = volume_to_network(image, geometry, intensity, 128, field_mm=320)
    assert (geom.new_rows, geom.new_cols) == (64, 64) and geom.top == geom.left == 32
    assert not slices[:, :32].any() and not slices[:, :, :32].any()  # the canvas around it is air
    canonical = to_canonical(image, geometry)
    wide = np.zeros((80, 80), np.float32)  # 320 mm of 4 mm pixels, the slice in the middle
    wide[20:60, 20:60] = normalise(np.ascontiguousarray(canonical[:, :, 1]), intensity)
    equalise_plane(wide, clahe_for(intensity))
    expected = cv2.resize(np.ascontiguousarray(wide[20:60, 20:60]), (64, 64), interpolation=cv2.INTER_LINEAR)
    np.testing.assert_allclose(slices[1, 32:96, 32:96], expected, atol=1e-6)
    # the same voxels as 8-bit slice images: no pixel size, so the field does not apply
    _, geom8, _ = volume_to_network(np.uint8(image % 256), geometry, intensity, 128, kind="uint8", field_mm=320)
    assert (geom8.new_rows, geom8.new_cols) == (128, 128)
    labels = np.asarray(rng.integers(0, 3, canonical.shape), np.uint8)
    np.testing.assert_array_equal(slices_to_labels(labels_to_slices(labels, geom), geom), labels)


def test_shrinking_loses_only_fine_detail():
    """512-pixel slices shrunk to 128 cannot round-trip exactly; blobs still agree closely."""
    rng = np.random.default_rng(1)
    from conftest import blob_labels
    labels = blob_labels((300, 240, 3), rng, n_blobs=5, values=(1,))
    g = plan_slices(300, 240, 128)
    back = slices_to_labels(labels_to_slices(labels, g), g)
    dice = 2 * np.sum((back > 0) & (labels > 0)) / (np.sum(back > 0) + np.sum(labels > 0))
    assert back.shape == labels.shape
    assert 0.97 < dice < 1.0


@pytest.mark.parametrize("image, labels, size", [
    ("copdgene-10002K-ct-64.nii.gz", "copdgene-10002K-lungs-64.nii.gz", 128),   # LPS
    ("copdgene-10002K-ct-64.nii.gz", "copdgene-10002K-zones-64.nii.gz", 128),
    ("totalseg-example-ct.nii.gz", "totalseg-example-seg.nii.gz", 128),         # RAS, 100+ labels
    ("copdgene-16021S-crop-ct.nii.gz", "copdgene-16021S-crop-lobes.nii.gz", 448),  # 443 x 349, not shrunk at 448
])
def test_round_trip_on_real_volumes(tmp_path, image, labels, size):
    samples = need_samples()
    for sub, name in (("images", image), ("labels", labels)):
        (tmp_path / sub).mkdir()
        (tmp_path / sub / "case.nii.gz").symlink_to(samples / name)
    out = prepare(tmp_path / "images", tmp_path / "labels", tmp_path / "s.h5", identity_config(size, 1.0))
    ref = nib.load(samples / labels)
    with SliceFile(out) as slices:
        back = slices.reassemble_labels("case")
        assert np.allclose(slices.geometry("case")[0].affine, ref.affine)
    np.testing.assert_array_equal(back, np.asarray(ref.dataobj))


def test_equalise_is_min_max_then_clahe_per_slice():
    from slice2d.config import IntensityConfig
    from slice2d.slicing import clahe_for, equalise_plane

    intensity = IntensityConfig(mode="clahe")
    rng = np.random.default_rng(1)
    planes = rng.random((3, 64, 48)).astype(np.float32) * 0.5 + 0.2
    planes[1] = 0.4                                     # a flat slice
    reference = []
    clahe = cv2.createCLAHE(clipLimit=intensity.clahe_clip, tileGridSize=(intensity.clahe_tiles,) * 2)
    for sl in planes:
        low, high = sl.min(), sl.max()
        stretched = (sl - low) / (high - low) if high > low else np.zeros_like(sl)
        reference.append(clahe.apply(np.round(stretched * 255).astype(np.uint8)) / 255)
    out = planes.copy()
    for sl in out:
        equalise_plane(sl, clahe_for(intensity))
    np.testing.assert_allclose(out, np.array(reference), atol=1e-6)
    assert np.ptp(out[1]) == 0 and np.ptp(out[0]) > 0.9  # a flat slice stays flat; others use the range


@pytest.mark.parametrize("classes", [2, 3])
def test_labels_from_probabilities_equal_the_argmax_of_the_resized_maps(classes):
    """The shortcut for slices where background wins everywhere changes nothing, ties included."""
    rng = np.random.default_rng(classes)
    probs = rng.random((6, 32, 32, classes)).astype(np.float32)
    probs[1, ..., 0] = probs[1].max(axis=-1)  # background ties or wins everywhere: skipped
    probs[2, ..., 0] = probs[2].max(axis=-1)
    probs[2, 5, 7, 1] = 10.0  # ... but for one pixel
    probs[3] = 0.0  # all tied
    geom = plan_slices(50, 41, 32, (0.8, 1.0))
    labels = probabilities_to_labels(probs, geom)
    expected = np.stack([probabilities_to_slice(p, geom).argmax(axis=-1) for p in probs], axis=2)
    np.testing.assert_array_equal(labels, expected)
    assert not labels[..., 1].any() and not labels[..., 3].any() and labels[..., 2].any()


@pytest.mark.parametrize("mode", ["window", "clahe"])
@pytest.mark.parametrize("order", ["F", "C"])
def test_slice_by_slice_network_input_equals_the_whole_volume_steps(mode, order):
    """``volume_to_network`` works one axial slice at a time; it gives exactly what the whole-volume
    steps give (normalise, then equalise, then resize), for any memory layout and orientation."""
    from slice2d.config import IntensityConfig
    from slice2d.slicing import clahe_for, equalise_plane, normalise, volume_to_network

    rng = np.random.default_rng(7)
    image = np.asarray(rng.integers(-1100, 600, (70, 52, 9)), dtype=np.int16, order=order)
    image[..., 4] = -300  # a flat slice
    geometry = geometry_of(nib.Nifti1Image(image, make_affine("PIL" if order == "F" else "LPS")))
    intensity = IntensityConfig(mode=mode)
    shape, geom, slices = volume_to_network(image, geometry, intensity, 32)
    canonical = to_canonical(image, geometry)
    planes = normalise(np.moveaxis(canonical, 2, 0), intensity)  # the whole volume at once
    if mode == "clahe":
        for sl in planes:
            equalise_plane(sl, clahe_for(intensity))
    interp = cv2.INTER_AREA if geom.new_rows < geom.rows or geom.new_cols < geom.cols else cv2.INTER_LINEAR
    expected = np.zeros_like(slices)
    for k, sl in enumerate(planes):
        expected[k, geom.top:geom.top + geom.new_rows, geom.left:geom.left + geom.new_cols] = \
            cv2.resize(sl, (geom.new_cols, geom.new_rows), interpolation=interp)
    assert shape == canonical.shape and geom == plan_slices(*canonical.shape[:2], 32, geometry.canonical_spacing[:2])
    np.testing.assert_array_equal(slices, expected)


@pytest.mark.parametrize("threshold", [0.2, 0.5, 0.7])
def test_a_foreground_threshold_labels_where_the_foreground_probability_exceeds_it(threshold):
    from slice2d.config import PredictConfig

    rng = np.random.default_rng(5)
    p1 = rng.random((4, 24, 24)).astype(np.float32)
    probs = np.stack([1 - p1, p1], axis=-1)
    geom = plan_slices(40, 30, 24, (1.0, 1.2))
    labels = probabilities_to_labels(probs, geom, PredictConfig(foreground_threshold=threshold).background_weight)
    resized = np.stack([probabilities_to_slice(p, geom)[..., 1] for p in probs], axis=2)
    decided = np.abs(resized - threshold) > 1e-5  # float rounding aside
    np.testing.assert_array_equal(labels[decided], (resized > threshold)[decided])
    assert 0 < labels.mean() < 1


def test_small_pieces_of_a_lung_map_are_dropped_in_3d():
    from slice2d.slicing import drop_small_components, plan_slices

    geom = plan_slices(20, 20, 24)  # padded: 2 pixels each side
    probs = np.zeros((4, 24, 24, 3), np.float32)
    probs[..., 0] = 0.9
    probs[..., 1] = 0.1
    probs[:, 4:20, 4:12, 1] = 0.95  # a large right lung
    probs[1:3, 4:20, 13:20, 2] = 0.95  # a large left lung
    probs[3, 2:4, 2:4, 1] = 0.95  # touches the right lung diagonally: one piece with it
    probs[0, 21, 21, 2] = 0.95  # a speck far from both: dropped
    before = probs.copy()
    drop_small_components(probs, geom)
    np.testing.assert_array_equal(probs[0, 21, 21], [1, 0, 0])
    probs[0, 21, 21] = before[0, 21, 21]
    np.testing.assert_array_equal(probs, before)  # nothing else moved
