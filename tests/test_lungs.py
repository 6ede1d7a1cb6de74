"""Lung extraction on a synthetic phantom (always) and on real CT (skipped without ../shared/data)."""

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from slice2d.lungs import extract_lungs, extract_lungs_nifti

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "ct-samples"
needs_data = pytest.mark.skipif(not DATA.is_dir(), reason=f"shared data folder {DATA} is absent")


def dice(a, b):
    return 2.0 * np.count_nonzero(a & b) / (np.count_nonzero(a) + np.count_nonzero(b))


def phantom():
    """Canonical RAS+ chest phantom, 4 mm voxels: (HU image, truth lungs 1 right / 2 left).

    Soft-tissue body ellipse in air, a table slab under it, two air ellipsoids (lungs, with
    vessels inside), a trachea tube from the top that splits into two bronchi entering the lungs.
    """
    shape = (64, 56, 40)
    x, y, z = np.meshgrid(*[np.arange(n, dtype=float) for n in shape], indexing="ij")
    image = np.full(shape, -1000.0)
    image[((x - 32) / 28) ** 2 + ((y - 28) / 20) ** 2 <= 1] = 40.0
    image[:, 3:5, :] = 200.0  # table, separate from the body
    lungs = np.zeros(shape, np.uint8)
    for value, cx in ((1, 44.0), (2, 20.0)):  # RAS: the right lung is at larger x
        inside = ((x - cx) / 9) ** 2 + ((y - 28) / 12) ** 2 + ((z - 17) / 14) ** 2 <= 1
        lungs[inside] = value
    image[lungs > 0] = -850.0
    rng = np.random.default_rng(0)
    image += rng.normal(0, 20, shape)
    vessels = (lungs > 0) & (((x - 44) ** 2 + (y - 28) ** 2 <= 2) | ((x - 20) ** 2 + (y - 30) ** 2 <= 2))
    image[vessels & (z > 10) & (z < 25)] = 40.0
    trachea = ((x - 32) ** 2 + (y - 34) ** 2 <= 4) & (z >= 24)
    bronchi = (np.abs(y - 34) <= 1) & (np.abs(z - 24) <= 1) & (np.abs(x - 32) <= 13)
    image[(trachea | bronchi) & (lungs == 0)] = -1000.0
    return image.astype(np.int16), lungs


def test_phantom_lungs_found_and_sided():
    image, truth = phantom()
    pred = extract_lungs(image, (4.0, 4.0, 4.0))
    assert pred.dtype == np.uint8 and pred.shape == image.shape
    assert set(np.unique(pred)) == {0, 1, 2}
    assert dice(pred == 1, truth == 1) >= 0.95
    assert dice(pred == 2, truth == 2) >= 0.95
    # Vessels inside the lungs are filled; the trachea above the lungs is not lung.
    assert pred[44, 28, 17] == 1
    assert not pred[32, 34, 36:].any()


@pytest.mark.parametrize("codes", [("L", "P", "S"), ("R", "A", "S"), ("A", "S", "L"), ("P", "R", "I")])
def test_nifti_orientation_round_trip(codes):
    from nibabel.orientations import apply_orientation, axcodes2ornt, inv_ornt_aff, ornt_transform

    image, truth = phantom()
    ornt = ornt_transform(axcodes2ornt(("R", "A", "S")), axcodes2ornt(codes))
    data = apply_orientation(image, ornt)
    affine = np.diag([4.0, 4.0, 4.0, 1.0]) @ inv_ornt_aff(ornt, image.shape)
    assert nib.aff2axcodes(affine) == codes
    img = nib.Nifti1Image(data, affine)
    pred = extract_lungs_nifti(img)
    assert pred.shape == data.shape
    expected = apply_orientation(truth, ornt)
    assert dice(pred == 1, expected == 1) >= 0.95
    assert dice(pred == 2, expected == 2) >= 0.95


def test_refuses_non_hu_and_no_lungs():
    image, _ = phantom()
    windowed = ((image.astype(float) + 1000) / 8).clip(0, 255).astype(np.uint8)
    with pytest.raises(ValueError, match="Hounsfield"):
        extract_lungs(windowed, (4.0, 4.0, 4.0))
    solid = np.where(image > -500, image, 40).astype(np.int16)
    solid[:, :2, :] = -1000  # air around, nothing inside the body
    with pytest.raises(ValueError, match="no lung-like air region"):
        extract_lungs(solid, (4.0, 4.0, 4.0))
    with pytest.raises(ValueError, match="3D"):
        extract_lungs(image[:, :, 0], (4.0, 4.0))


@needs_data
def test_copdgene_dice_and_sides():
    img = nib.load(str(DATA / "copdgene-10002K-ct-64.nii.gz"))
    ref_img = nib.load(str(DATA / "copdgene-10002K-lungs-64.nii.gz"))
    ref = np.asanyarray(ref_img.dataobj)
    pred = extract_lungs_nifti(img)
    # Measured: right 0.974, left 0.977, whole 0.976.
    assert dice(pred == 1, ref == 1) >= 0.96
    assert dice(pred == 2, ref == 2) >= 0.96
    assert dice(pred > 0, ref > 0) >= 0.96
    centre_x = [nib.affines.apply_affine(img.affine, np.argwhere(pred == v).mean(0))[0] for v in (1, 2)]
    assert centre_x[0] > 0 > centre_x[1]  # RAS+: patient right at positive x


@needs_data
@pytest.mark.slow
def test_cmb_crc_full_resolution_volumes_plausible():
    img = nib.load(str(DATA / "cmb-crc-chest-ct.nii.gz"))
    pred = extract_lungs_nifti(img)
    voxel_ml = float(np.prod(nib.affines.voxel_sizes(img.affine))) / 1000
    right, left = (np.count_nonzero(pred == v) * voxel_ml for v in (1, 2))
    # Measured: right 2479 mL, left 1986 mL.
    assert 1500 <= right <= 4000 and 1300 <= left <= 4000
    assert right > left


def test_surface_voxels_more_tissue_than_lung_are_trimmed():
    from slice2d.lungs import _trim_partial_volume

    image = np.full((40, 40, 3), 40.0, np.float32)        # soft tissue
    image[5:35, 5:35] = -850.0                            # lung
    labels = np.zeros(image.shape, np.uint8)
    labels[5:35, 5:35] = 1
    image[5, 10:20] = -300.0    # surface voxels mostly tissue: not lung
    image[5, 20:30] = -700.0    # surface voxels mostly lung: lung
    image[34, 10:20] = 20.0     # a dense lesion at the pleura with depth: stays lung
    image[33, 10:20] = 20.0
    out = _trim_partial_volume(labels, image)
    assert not out[5, 10:20].any()
    assert np.all(out[5, 20:30] == 1)
    assert np.all(out[33:35, 10:20] == 1)
    assert np.array_equal(out[6:33], labels[6:33])        # only the surface changes


@pytest.mark.parametrize("dtype", [np.int16, np.uint8, np.uint16])
@pytest.mark.parametrize("factor", [2, 3, 4])
def test_block_means_equal_numpy_mean_bit_for_bit(dtype, factor):
    """The working grid's block means (strided sums) are numpy's reshape-mean to the last bit, for
    integer images in nibabel's Fortran order and flipped, as the canonical reorientation gives."""
    from slice2d.lungs import _block_means

    info = np.iinfo(dtype)
    raw = np.random.default_rng(factor).integers(info.min, info.max, (37, 29, 5), endpoint=True).astype(dtype)
    for image in (raw, np.asfortranarray(raw)[::-1, ::-1]):
        nx, ny = image.shape[0] // factor * factor, image.shape[1] // factor * factor
        expected = image[:nx, :ny].reshape(nx // factor, factor, ny // factor, factor, -1).mean(axis=(1, 3),
                                                                                             dtype=np.float32)
        got = _block_means(image, factor)
        assert got.dtype == np.float32 and got.flags.c_contiguous
        np.testing.assert_array_equal(got.view(np.uint32), expected.view(np.uint32))


def _blobs(seed, shape=(40, 36, 12), level=0.6):
    from scipy import ndimage

    noise = np.random.default_rng(seed).random(shape)
    return ndimage.uniform_filter(noise, size=(5, 5, 3)) > level


def test_component_selection_equals_labelling_each_step_anew():
    """Large components less gas: one labelling gives what labelling each step's result anew
    gives, the large ones taken again after the gas (the straightforward version, written out
    here)."""
    from scipy import ndimage

    from slice2d.lungs import GAS_HU, MIN_COMPONENT_FRACTION, MIN_COMPONENT_ML, _large_ids, _not_gas
    from slice2d.morphology import erode, select

    def largest(mask, voxel_ml):
        lab, n = ndimage.label(mask)
        sizes = np.bincount(lab.ravel())[1:]
        if n == 0:
            return mask & False
        keep_min = max(MIN_COMPONENT_FRACTION * sizes.max(), MIN_COMPONENT_ML / voxel_ml)
        return select(lab, np.nonzero(sizes >= keep_min)[0] + 1)

    def drop_gas(cand, image):
        lab, n = ndimage.label(cand)
        inner_lab = np.where(erode(cand), lab, 0)
        keep = []
        for i in range(1, n + 1):
            values = image[inner_lab == i]
            if values.size == 0:
                values = image[lab == i]
            if float(np.median(values)) >= GAS_HU:
                keep.append(i)
        return select(lab, keep) if keep else cand

    rng = np.random.default_rng(7)
    checked = 0
    for seed in range(6):
        inner = _blobs(seed, level=0.55)
        lab, n = ndimage.label(inner)
        gas = rng.random(n + 1) < 0.4  # some components are gas, whole
        gas[np.argmax(np.bincount(lab.ravel())[1:]) + 1] = seed % 2 == 0  # the largest too, at times
        image = np.where(gas[lab], -1000, -850).astype(np.int16) + rng.integers(-40, 40, inner.shape).astype(np.int16)
        for voxel_ml in (0.05, 0.5):
            want = largest(drop_gas(largest(inner, voxel_ml), image), voxel_ml)
            got = select(lab, _not_gas(lab, _large_ids(np.bincount(lab.ravel()), np.arange(1, n + 1), voxel_ml), image))
            np.testing.assert_array_equal(got, want)
            checked += int(0 < np.count_nonzero(want) < np.count_nonzero(inner))
    assert checked >= 4  # the rules dropped some components and kept others


def test_attach_pieces_equals_the_whole_grid_version():
    """Pieces touching a lung join the nearest lung: the same markers as computing the touching
    pieces and the nearest lung on the whole grid."""
    from scipy import ndimage

    from slice2d.lungs import _attach_pieces
    from slice2d.morphology import select

    spacing = (1.5, 1.5, 3.0)
    for seed in range(4):
        lungs = _blobs(seed, level=0.5)
        lab, n = ndimage.label(lungs)
        order = np.argsort(np.bincount(lab.ravel())[1:])[::-1] + 1
        markers = np.zeros(lungs.shape, np.uint8)
        markers[lab == order[0]], markers[lab == order[1]] = 1, 2
        rest = (_blobs(seed + 10, level=0.62) | (lungs & (markers == 0))) & (markers == 0)
        airway = _blobs(seed + 20, level=0.65)
        want = markers.copy()
        idx = ndimage.distance_transform_edt(markers == 0, sampling=spacing, return_distances=False,
                                             return_indices=True)
        pieces = ndimage.label(rest)[0]
        touching = np.unique(pieces[ndimage.binary_dilation(markers > 0) & (pieces > 0)])
        keep = select(pieces, touching) & ~airway
        want[keep] = markers[tuple(idx)][keep]
        got = markers.copy()
        _attach_pieces(got, rest, airway, spacing)
        assert np.count_nonzero(want != markers) > 0
        np.testing.assert_array_equal(got, want)
    # a piece that meets a lung only across the face of its own box, and one that meets none
    markers = np.zeros((12, 10, 6), np.uint8)
    markers[:5, :, :] = 1
    markers[9:, :, :] = 2
    rest = np.zeros(markers.shape, bool)
    rest[5:7, 2:4, 1:3] = True
    rest[7, 8, 5] = True
    _attach_pieces(markers, rest, np.zeros_like(rest), spacing)
    assert np.all(markers[5:7, 2:4, 1:3] == 1) and markers[7, 8, 5] == 0
