"""Anatomy after the networks: lung sources, lesions kept to the body and lungs, the sanity block,
and a cohort in which one scan has no lungs."""

from __future__ import annotations

import csv
import json

import nibabel as nib
import numpy as np
import pytest
from conftest import invoke, make_affine

from slice2d.anatomy import ScanAnatomy, keep_lesions, sanity, scan_anatomy
from slice2d.io import InputError, geometry_of
from slice2d.synth import make_phantom, write_phantoms


def _phantom_img(seed: int = 3):
    ph = make_phantom(shape=(80, 80, 40), spacing=(4.0, 4.0, 8.0), seed=seed)
    return ph, nib.Nifti1Image(ph.image, ph.affine)


def test_combined_adds_dense_lung_near_the_lungs_only():
    ph, img = _phantom_img()
    builtin = scan_anatomy(img, None, "combined")  # no model map: the built-in extraction
    assert builtin.source == "builtin"
    # a "network" that calls dense tissue lung: a rim just outside the extracted lungs (consolidation
    # the threshold missed) and a block far from them, outside the body
    from scipy import ndimage

    inplane = np.zeros((3, 3, 3), bool)
    inplane[:, :, 1] = True
    grown = ndimage.binary_dilation(builtin.lungs > 0, inplane, iterations=2)  # 8 mm, within REACH_MM
    near = grown & (builtin.lungs == 0) & (ph.image >= -400) & builtin.body & ~builtin.airways
    far = np.zeros(ph.image.shape, bool)
    far[:4, :4, :] = True  # the corner of the field of view: air outside the body
    model = (near | far).astype(np.uint8) | (builtin.lungs > 0)
    combined = scan_anatomy(img, model, "combined")
    assert combined.source == "combined"
    assert np.count_nonzero(near) > 50
    assert np.all(combined.lungs[near] > 0), "dense lung next to the lungs is added"
    assert not combined.lungs[far].any(), "nothing outside the body is added"
    assert np.all(combined.lungs[builtin.lungs > 0] == builtin.lungs[builtin.lungs > 0])
    model_only = scan_anatomy(img, model, "model")
    assert model_only.lungs[far].all() and model_only.body is None


def test_keep_lesions_drops_lesions_outside_the_body_and_away_from_the_lungs():
    ph, img = _phantom_img()
    anatomy = scan_anatomy(img, None, "builtin")
    geometry = geometry_of(img)
    lesions = np.zeros(ph.image.shape, np.uint8)
    inside = (anatomy.lungs > 0) & (np.arange(80)[:, None, None] < 40)
    lesions[inside] = 1
    lesions[:3, :3, 10:20] = 1  # outside the body
    kept, lungs, _ = keep_lesions(lesions, anatomy, geometry)
    assert np.array_equal(kept > 0, inside)
    no_body = ScanAnatomy(anatomy.lungs, None, None, "model")  # without a body mask only the lung rule applies
    kept2, _, _ = keep_lesions(lesions, no_body, geometry)
    assert not kept2[:3, :3].any(), "a piece far from the lungs goes with or without the body mask"
    assert np.array_equal(lungs > 0, anatomy.lungs > 0)


@pytest.mark.parametrize("kind", ["RAS", "LPS", "PIL"])
def test_sanity_says_when_the_scan_stops_short_of_the_apex_or_bases(kind):
    shape = (20, 20, 30) if kind != "PIL" else (20, 30, 20)
    affine = make_affine(kind, (2.0, 2.0, 2.0))
    axis = 2 if kind != "PIL" else 1  # the array axis along S (PIL: the second, running inferior)
    lungs = np.zeros(shape, np.uint8)
    index = [slice(5, 15)] * 3
    index[axis] = slice(4, 26)
    lungs[tuple(index)] = 1
    anatomy = ScanAnatomy(lungs, np.ones(shape, bool), None, "builtin")
    block = sanity(anatomy, lungs, affine)
    assert block["reaches_apex"] is True and block["reaches_bases"] is True
    assert block["right_lung_ml"] == pytest.approx(10 * 10 * 22 * 8 / 1000)
    cut = lungs.copy()
    index[axis] = slice(None)
    cut[tuple(index)] = 1  # now the lung fills the axis from end to end
    block = sanity(ScanAnatomy(cut, None, None, "model"), cut, affine)
    assert block["reaches_apex"] is False and block["reaches_bases"] is False
    assert block["body_found"] is None
    index[axis] = slice(4, None)  # the lung runs out of the scan at one end only: which end is anatomy's
    top = lungs.copy()
    top[tuple(index)] = 1
    superior_is_high = kind != "PIL"
    block = sanity(anatomy, top, affine)
    assert block["reaches_apex"] is not superior_is_high and block["reaches_bases"] is superior_is_high


def test_a_report_of_a_scan_that_stops_short_says_what_its_numbers_cover():
    """A scan that misses the apices (or bases) gets a coverage warning in its report:
    its PI% and score cover only the lung in the scan, and its zones are thirds of that part."""
    from slice2d.report import case_report
    from slice2d.severity import SeverityOptions

    lungs = np.zeros((20, 20, 30), np.uint8)
    lungs[3:9, 5:15, 4:30], lungs[11:17, 5:15, 4:30] = 1, 2  # both lungs run out of the top slice
    lesions = np.zeros_like(lungs)
    lesions[4:7, 6:9, 20:28] = 1
    affine = make_affine("RAS", (2.0, 2.0, 2.0))
    anatomy = ScanAnatomy(lungs, np.ones(lungs.shape, bool), None, "builtin")
    report = case_report(lesions, lungs, None, affine, "c", SeverityOptions(), sanity(anatomy, lungs, affine))
    assert report["sanity"]["reaches_apex"] is False and report["sanity"]["reaches_bases"] is True
    warning = report["coverage_warning"]
    assert "apices" in warning and "bases" not in warning and "zones are thirds" in warning
    lobes = np.where(lungs == 1, 3, np.where(lungs == 2, 5, 0)).astype(np.uint8)  # slice2d labels: R lower, L lower
    with_lobes = case_report(lesions, lungs, lobes, affine, "c", SeverityOptions(), sanity(anatomy, lungs, affine))
    assert "zones" not in with_lobes["coverage_warning"]
    whole = lungs.copy()
    whole[:, :, 26:] = 0  # now the lungs end inside the scan at both ends
    full = case_report(lesions, whole, None, affine, "c", SeverityOptions(), sanity(anatomy, whole, affine))
    assert "coverage_warning" not in full


def test_no_lungs_is_a_one_line_error():
    body = np.full((40, 40, 12), -1000.0, np.float32)
    yy, xx = np.mgrid[:40, :40]
    body[(yy - 20) ** 2 + (xx - 20) ** 2 < 15 ** 2] = 40.0  # a water cylinder: a body without lungs
    img = nib.Nifti1Image(body, make_affine("RAS", (5.0, 5.0, 5.0)))
    with pytest.raises(InputError, match="no lungs found"):
        scan_anatomy(img, None, "combined", "abdomen.nii.gz")


@pytest.mark.slow
def test_cohort_goes_on_past_a_scan_without_lungs(tmp_path):
    data = tmp_path / "in"
    write_phantoms(tmp_path / "ph", cases=2, shape=(64, 64, 24), spacing=(5.0, 5.0, 10.0), seed=1)
    data.mkdir()
    for p in sorted((tmp_path / "ph" / "images").glob("*.nii.gz")):
        p.rename(data / p.name)
    body = np.full((64, 64, 24), -1000.0, np.float32)
    yy, xx = np.mgrid[:64, :64]
    body[(yy - 32) ** 2 + (xx - 32) ** 2 < 25 ** 2] = 40.0
    nib.save(nib.Nifti1Image(body, make_affine("LPS", (5.0, 5.0, 10.0))), data / "no_lungs.nii.gz")
    before = {p.name: p.read_bytes() for p in data.iterdir()}
    result = invoke("predict", data, "--out", tmp_path / "out", "--model", "checkpoints/lesions-128", "-q")
    assert result.exit_code == 1
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "1 of 3 cases failed" in errors[0] and "Traceback" not in result.output
    assert {p.name: p.read_bytes() for p in data.iterdir()} == before, "inputs untouched"
    out = tmp_path / "out"
    assert sorted(p.name for p in out.glob("*.nii.gz")) == ["phantom_000.nii.gz", "phantom_001.nii.gz"]
    rows = list(csv.DictReader((out / "severity" / "cohort.csv").open()))
    assert [r["case"] for r in rows] == ["phantom_000", "phantom_001"]
    assert all(r["lungs_found"] == "True" for r in rows)
    failed = list(csv.DictReader((out / "severity" / "failures.csv").open()))
    assert [f["case"] for f in failed] == ["no_lungs"] and "no lungs found" in failed[0]["error"]
    report = json.loads((out / "severity" / "phantom_000.json").read_text())
    assert report["sanity"]["lung_source"] == "builtin" and report["sanity"]["body_found"] is True
    assert report["sanity"]["right_lung_ml"] > 100 and report["sanity"]["left_lung_ml"] > 100
    assert report["sanity"]["intensity"] == "HU" and report["sanity"]["air_outside_body_hu"] < -900
    assert not (out / "no_lungs.nii.gz").exists() and not (out / "lungs" / "no_lungs.nii.gz").exists()


@pytest.mark.slow
@pytest.mark.parametrize("source", ["builtin", "combined", "model"])
def test_predict_keeps_gas_table_and_neck_out_of_the_lungs(tmp_path, source):
    """`slice2d predict` with the shipped models on a whole-scan phantom (neck to abdomen, table,
    stomach and bowel gas): with the built-in extraction (the default) or combined, none of them
    is lung; the lung network
    alone (``--lung-source model``) is measured too, so the test shows what the anatomy adds."""
    from slice2d.synth_scan import CONFOUNDER_LABELS

    write_phantoms(tmp_path / "ph", cases=1, shape=(96, 96, 48), spacing=(3.5, 3.5, 8.0), seed=4, whole_scan=True)
    name = "phantom_000.nii.gz"
    result = invoke("predict", tmp_path / "ph" / "images" / name, "--out", tmp_path / "out",
                    "--model", "checkpoints/lesions-128", "--lung-source", source, "-q")
    assert result.exit_code == 0, result.output
    lungs = np.asarray(nib.load(tmp_path / "out" / "lungs" / name).dataobj)
    lesions = np.asarray(nib.load(tmp_path / "out" / name).dataobj)
    confounders = np.asarray(nib.load(tmp_path / "ph" / "confounders" / name).dataobj)
    truth = np.asarray(nib.load(tmp_path / "ph" / "lungs" / name).dataobj)
    wrong = {CONFOUNDER_LABELS[v]: int(np.count_nonzero((lungs > 0) & (confounders == v))) for v in CONFOUNDER_LABELS}
    dice = 2 * np.count_nonzero((lungs > 0) & (truth > 0)) / (np.count_nonzero(lungs) + np.count_nonzero(truth))
    if source != "model":
        # main bronchi where they enter the lung at the hilum may stay lung (as in most reference
        # masks): 1-2 mL; the trachea above the lungs never
        bronchi = wrong.pop("trachea and main bronchi")
        assert bronchi * 3.5 * 3.5 * 8 / 1000 < 3.0
        apex = np.flatnonzero(truth.any(axis=(0, 1))).max()
        assert not (lungs[:, :, apex + 1:] > 0).any(), "nothing above the apex is lung"
        assert wrong == {k: 0 for k in wrong}, wrong
        assert dice > 0.95
        assert not (lesions[confounders > 0]).any(), "no lesion in gas, table, airways or outside air"
    else:  # the network alone: recorded, not required; the anatomy is what keeps these out
        assert dice > 0.5


def test_a_lesion_piece_mostly_outside_the_lungs_keeps_only_its_part_inside_them():
    ph, img = _phantom_img()
    anatomy = scan_anatomy(img, None, "builtin")
    geometry = geometry_of(img)
    k = int(np.argmax(np.count_nonzero(anatomy.lungs, axis=(0, 1))))  # the slice with the most lung
    lung = anatomy.lungs[:, :, k] > 0
    xs, ys = np.nonzero(lung)
    lesions = np.zeros(ph.image.shape, np.uint8)
    inside_piece = np.zeros_like(lung)
    inside_piece[xs[::2], ys[::2]] = True  # a lesion inside the lungs ...
    from scipy import ndimage

    inside_piece = ndimage.binary_dilation(inside_piece) & lung
    rim = ndimage.binary_dilation(lung, iterations=2) & ~lung & anatomy.body[:, :, k]  # ... with a rim outside
    lesions[:, :, k][inside_piece | rim] = 1
    kept, _, _ = keep_lesions(lesions, anatomy, geometry)
    assert np.array_equal(kept[:, :, k] > 0, inside_piece | rim), "mostly inside: whole"
    body = anatomy.body[:, :, k] & ~ndimage.binary_dilation(lung, iterations=3)  # tissue 12 mm and more from the lungs
    big = np.zeros_like(lesions)
    big[:, :, k][inside_piece | rim | body] = 1  # mostly outside the lungs, touching them
    assert np.count_nonzero(inside_piece) < np.count_nonzero(rim | body)
    kept, lungs, _ = keep_lesions(big, anatomy, geometry)
    assert np.array_equal(kept[:, :, k] > 0, inside_piece), "only the part inside the lungs stays"
    np.testing.assert_array_equal(lungs, anatomy.lungs)  # nothing outside them joins the lungs


@pytest.mark.parametrize("order", [(0, 1, 2), (2, 0, 1)])
def test_lesions_far_from_the_lungs_are_dropped(order):
    from slice2d.anatomy import LUNG_MARGIN_MM, lesions_near_lungs

    lungs = np.zeros((40, 40, 6), np.uint8)
    lungs[10:30, 10:20, 1:5] = 1
    lungs[10:30, 22:30, 1:5] = 2
    lesions = np.zeros_like(lungs)
    lesions[15, 12, 2] = 2  # inside the lungs
    lesions[15, 20 + int(LUNG_MARGIN_MM) // 2, 3] = 1  # just outside, within the margin (1 mm pixels)
    lesions[15, 35, 3] = 1  # 6 mm beyond the lungs' edge in its slice: dropped
    lesions[15, 12, 5] = 1  # a slice without lungs: dropped
    lesions[2:12, 25, 2] = 1  # a strip from the lungs' edge to 8 mm beyond it: kept whole
    lesions[34:38, 34:38, 2] = 2  # a piece wholly beyond the margin: dropped
    expected = lesions.copy()
    expected[15, 35, 3] = expected[15, 12, 5] = 0
    expected[34:38, 34:38, 2] = 0
    # the same scene stored with its axes in another order: the margin still runs within axial slices
    lungs_in, lesions_in, geometry = _reordered(lungs, lesions, (1.0, 1.0, 3.0), order)
    before = lesions_in.copy()
    kept = lesions_near_lungs(lesions_in, lungs_in, geometry)
    np.testing.assert_array_equal(kept, np.transpose(expected, order))
    assert kept.dtype == lesions_in.dtype
    np.testing.assert_array_equal(lesions_in, before)  # the input is left alone


def _reordered(lungs: np.ndarray, lesions: np.ndarray, spacing: tuple[float, float, float], order: tuple[int, ...]):
    """Both maps stored with their axes in ``order``, and the geometry of that storage."""
    affine = np.zeros((4, 4))
    affine[3, 3] = 1
    for axis, src in enumerate(order):
        affine[src, axis] = spacing[src]
    lungs_in = np.transpose(lungs, order)
    return lungs_in, np.transpose(lesions, order), geometry_of(nib.Nifti1Image(lungs_in, affine))


@pytest.mark.parametrize("order", [(0, 1, 2), (1, 2, 0)])
def test_lesions_outside_the_lung_map_join_the_nearest_lung(order):
    """Lesion the lung model left out (dense consolidation at the lung's edge) becomes lung of the
    side it touches; lung pixels, background and slices without lung stay as they were."""
    from slice2d.anatomy import lungs_with_lesions

    lungs = np.zeros((30, 40, 4), np.uint8)
    lungs[5:25, 5:15, 0:3] = 1
    lungs[5:25, 25:35, 0:3] = 2
    lesions = np.zeros_like(lungs)
    lesions[10:20, 2:8, 1] = 1     # overlaps the right lung's outer edge
    lesions[10:12, 35:39, 1] = 2   # beyond the left lung
    lesions[10:12, 16:18, 2] = 1   # between the lungs, nearer the right (1 mm from it, 7 mm from the left)
    lesions[10:12, 10:12, 3] = 1   # a slice without lungs
    expected = lungs.copy()
    expected[10:20, 2:5, 1] = 1
    expected[10:12, 35:39, 1] = 2
    expected[10:12, 16:18, 2] = 1
    lungs_in, lesions_in, geometry = _reordered(lungs, lesions, (0.8, 0.8, 2.5), order)
    before = lungs_in.copy()
    out = lungs_with_lesions(lungs_in, lesions_in, geometry)
    np.testing.assert_array_equal(out, np.transpose(expected, order))
    assert out.dtype == lungs_in.dtype
    np.testing.assert_array_equal(lungs_in, before)


def _solid_nodules_whole_volume(lesions, lungs, hu, spacing):
    """The solid-nodule rule of ``keep_lesions`` the straightforward way, on canonical arrays: 3D
    labelling (8-connected in-plane, face-connected across slices), each lesion's ring in-plane."""
    from scipy import ndimage

    from slice2d import anatomy as a

    structure = np.zeros((3, 3, 3), bool)
    structure[:, :, 1] = True
    structure[1, 1, :] = True
    labels, n = ndimage.label(lesions > 0, structure)
    drop = np.zeros(lesions.shape, bool)
    for i in range(1, n + 1):
        own = labels == i
        ring = ndimage.binary_dilation(own, np.ones((3, 3, 1), bool)) & (lesions == 0)
        volume = np.count_nonzero(own) * np.prod(spacing)
        spread = np.cov(np.argwhere(own).T * np.array(spacing)[:, None], bias=True) if volume else None
        spread = np.atleast_2d(spread) + np.diag(np.square(spacing)) / 12
        elongation = np.sqrt(np.linalg.eigvalsh(spread)[-1] / np.linalg.eigvalsh(spread)[0])
        if (volume / 1000 <= a.NODULE_MAX_ML and np.mean(hu[own] >= a.SOLID_HU) >= a.NODULE_SOLID_FRACTION
                and ring.any() and np.mean(lungs[ring] > 0) >= a.NODULE_IN_LUNG
                and elongation <= a.NODULE_ELONGATION):
            drop |= own
    return drop


def _keep_lesions_whole_volume(lesions, anatomy, geometry, image):
    """``keep_lesions`` the straightforward way: each rule over the whole volume in turn."""
    import cv2

    from slice2d.anatomy import MIN_INSIDE_FRACTION, lesions_near_lungs, lungs_with_lesions
    from slice2d.io import from_canonical, to_canonical

    nodules = _solid_nodules_whole_volume(to_canonical(lesions, geometry), to_canonical(anatomy.lungs, geometry),
                                          to_canonical(image, geometry), geometry.canonical_spacing)
    lesions = np.array(lesions)
    lesions[from_canonical(nodules, geometry)] = 0
    lesions[~anatomy.body] = 0
    lesions[(image < -320.0) & (anatomy.lungs == 0)] = 0
    kept = np.array(to_canonical(lesions_near_lungs(lesions, anatomy.lungs, geometry), geometry))
    lung = to_canonical(anatomy.lungs, geometry) > 0
    for k in range(kept.shape[2]):  # lesion pieces mostly outside the lungs keep only their part inside them
        n, pieces = cv2.connectedComponents((kept[:, :, k] > 0).astype(np.uint8), connectivity=8)
        outside = np.bincount(pieces[lung[:, :, k]], minlength=n) < MIN_INSIDE_FRACTION * np.bincount(pieces.ravel())
        outside[0] = False
        kept[:, :, k][outside[pieces] & ~lung[:, :, k]] = 0
    kept = from_canonical(kept, geometry)
    return kept, lungs_with_lesions(anatomy.lungs, kept, geometry)


def test_keep_lesions_slice_by_slice_equals_the_whole_volume_rules():
    """The rules run slice by slice on the slices with lesion give, voxel for voxel, what each rule
    over the whole volume gives, here on random lesions over a phantom (LPS grid, as most scans)."""
    ph = make_phantom(shape=(80, 80, 40), spacing=(4.0, 4.0, 8.0), seed=5)
    flip = np.diag([-1.0, -1.0, 1.0, 1.0])  # the same voxels on an LPS grid
    img = nib.Nifti1Image(np.asfortranarray(ph.image[::-1, ::-1]), flip @ ph.affine @ flip)
    found = scan_anatomy(img, None, "builtin")
    body = found.body.copy()
    body[:, :, 25:] = False  # a body mask that leaves out lung: there the body rule alone drops lesion
    anatomy = ScanAnatomy(found.lungs, body, found.airways, found.source)
    rng = np.random.default_rng(0)
    noise = rng.random(ph.image.shape)
    from scipy import ndimage

    lesions = (ndimage.uniform_filter(noise, size=(5, 5, 1)) > 0.55).astype(np.uint8)
    lesions[lesions > 0] = rng.integers(1, 3, np.count_nonzero(lesions))  # two lesion classes
    image = np.asanyarray(img.dataobj)
    geometry = geometry_of(img)
    kept, lungs, _ = keep_lesions(lesions, anatomy, geometry, image)
    want_kept, want_lungs = _keep_lesions_whole_volume(lesions, anatomy, geometry, image)
    assert 0 < np.count_nonzero(kept) < np.count_nonzero(lesions)
    assert np.count_nonzero(lungs) > np.count_nonzero(anatomy.lungs)  # lesion outside the lungs added
    np.testing.assert_array_equal(kept, want_kept)
    np.testing.assert_array_equal(lungs, want_lungs)


def test_air_outside_body_gathers_the_same_values_in_any_layout():
    from slice2d.anatomy import _air_outside_body

    rng = np.random.default_rng(1)
    image = rng.integers(-1100, 200, (30, 20, 9)).astype(np.int16)
    body = rng.random(image.shape) < 0.5
    want = np.sort(image[~body & (image < -500)])
    assert want.size > 100
    for im in (image, np.asfortranarray(image), np.asfortranarray(image[::-1])[::-1]):
        for b in (body, np.asfortranarray(body), np.ascontiguousarray(body[:, ::-1])[:, ::-1]):
            np.testing.assert_array_equal(np.sort(np.concatenate(list(_air_outside_body(im, b, chunk=4)))), want)


@pytest.mark.parametrize("dtype", [np.int16, np.int8, np.uint8, np.float32, np.int32])
@pytest.mark.parametrize("odd", [False, True])
def test_median_of_the_air_outside_the_body_is_numpys_median(dtype, odd):
    """The histogram median of 8- and 16-bit scans is np.median's number exactly, for odd and even
    counts (the mean of the two middle values); other types, and scans without such air, too."""
    from slice2d.anatomy import _median_air_outside_body

    rng = np.random.default_rng(2)
    shape = (12, 10, 9)
    if dtype in (np.int8, np.uint8):  # they cannot hold -500: no air, whatever the image
        image = rng.integers(np.iinfo(dtype).min, np.iinfo(dtype).max, shape).astype(dtype)
    else:  # distinct values, so that the two middle values of an even count differ
        image = rng.permutation(np.arange(-1100, 200))[:np.prod(shape)].reshape(shape).astype(dtype)
    body = rng.random(image.shape) < 0.5
    values = image[~body & (image < -500)]
    if values.size and values.size % 2 != odd:  # one more air voxel outside the body makes the count odd / even
        body[np.unravel_index(np.flatnonzero(body & (image < -500))[0], body.shape)] = False
        values = image[~body & (image < -500)]
    assert values.size % 2 == odd or values.size == 0
    got = _median_air_outside_body(np.asfortranarray(image), body, chunk=4)
    if values.size == 0:
        assert got is None and dtype in (np.int8, np.uint8)
    else:
        assert got == float(np.median(values)) and values.size > 100
        middle = np.sort(values)[(values.size - 1) // 2:values.size // 2 + 1]
        assert odd or middle[0] != middle[1]  # an even count: the median lies between two values


@pytest.mark.parametrize("kind", ["LPS", "PIL"])
def test_the_top_of_a_dome_is_not_a_lesion(kind):
    """A soft blob in the slice that first cuts a dome rising into the lung (dense tissue right
    below it) is dropped; a lesion as thin over lung, or as tall over dense tissue, stays."""
    from slice2d.io import Geometry, from_canonical

    rows, cols, nz = 60, 60, 20  # canonical (rows, cols, Z), Z rising to the head, 2.5 mm slices
    hu = np.full((rows, cols, nz), -850, np.int16)  # lung everywhere in the box ...
    hu[:, :5], hu[:, -5:], hu[:5], hu[-5:] = 40, 40, 40, 40  # ... walled by the chest
    r, c = np.mgrid[:rows, :cols]
    for z in range(8):  # a dome: its section shrinks upwards, dense up to z 7
        hu[:, :, z][(r - 30) ** 2 + (c - 40) ** 2 <= (12 - z) ** 2] = 40
    top = (r - 30) ** 2 + (c - 40) ** 2 <= 16
    hu[:, :, 8][top] = -400  # the first slice above it averages dome and lung
    lesions = np.zeros(hu.shape, np.uint8)
    lesions[:, :, 8][top] = 1  # the top of the dome, one slice
    over_lung = (r - 20) ** 2 + (c - 15) ** 2 <= 16
    lesions[:, :, 12][over_lung] = 1  # as thin, over lung
    tall = (r - 45) ** 2 + (c - 15) ** 2 <= 16
    hu[:, :, 2][tall] = 40
    for z in range(3, 8):  # 12.5 mm tall, over dense tissue
        lesions[:, :, z][tall] = 2
    lungs = np.zeros(hu.shape, np.uint8)
    lungs[5:-5, 5:-5, 1:-1] = 1
    body = np.ones(hu.shape, bool)
    affine = make_affine(kind, (2.0, 2.0, 2.5))
    shape = (rows, cols, nz) if kind != "PIL" else (rows, nz, cols)
    geometry = Geometry(affine, shape, tuple(nib.aff2axcodes(affine)))
    on_grid = [from_canonical(a, geometry) for a in (hu, lesions, lungs, body)]
    assert on_grid[0].shape == shape
    anatomy = ScanAnatomy(on_grid[2], on_grid[3], np.zeros(shape, bool), "builtin")
    kept, _, _ = keep_lesions(on_grid[1], anatomy, geometry, on_grid[0])
    expected = lesions.copy()
    expected[:, :, 8] = 0
    assert np.array_equal(kept, from_canonical(expected, geometry))
    kept_without_hu, _, _ = keep_lesions(on_grid[1], anatomy, geometry)
    assert np.array_equal(kept_without_hu, on_grid[1]), "without HU (8-bit slices) nothing is judged a dome"


@pytest.mark.parametrize("kind", ["LPS", "PIL"])
def test_a_solid_nodule_is_not_infection_but_solid_consolidation_is(kind):
    """A round solid ball surrounded by lung is dropped from the lesions and counted in the sanity
    block; lesion as solid at the pleura, a solid band along the lung, a ball with ground-glass
    around it, and a nodule on 8-bit slices (no HU) stay."""
    from slice2d.io import Geometry, from_canonical

    rows, cols, nz = 90, 90, 40  # canonical (rows, cols, Z), 1 mm pixels, 2 mm slices
    r, c, z = np.mgrid[:rows, :cols, :nz]
    hu = np.full((rows, cols, nz), -850, np.int16)
    wall = (r < 5) | (r >= rows - 5) | (c < 5) | (c >= cols - 5)
    hu[wall] = 40
    lungs = np.zeros(hu.shape, np.uint8)
    lungs[~wall] = 1
    nodule = (r - 30) ** 2 + (c - 30) ** 2 + ((z - 20) * 2) ** 2 <= 8 ** 2  # 2.1 mL, 16 mm across
    pleural = (r - 70) ** 2 + (c - 8) ** 2 + ((z - 20) * 2) ** 2 <= 8 ** 2  # as solid, at the chest wall
    band = (np.abs(r - 60) <= 2) & (c >= 30) & (c < 80) & (np.abs(z - 8) <= 1)  # solid, elongated
    halo = (r - 30) ** 2 + (c - 65) ** 2 + ((z - 20) * 2) ** 2 <= 10 ** 2  # a ball in ground-glass
    core = (r - 30) ** 2 + (c - 65) ** 2 + ((z - 20) * 2) ** 2 <= 6 ** 2
    for mask, value in ((nodule, 30), (pleural, 30), (band, 20), (halo, -600), (core, 0)):
        hu[mask] = value
    lesions = (nodule | pleural | band | halo).astype(np.uint8)
    affine = make_affine(kind, (1.0, 1.0, 2.0) if kind != "PIL" else (1.0, 2.0, 1.0))  # 2 mm slices either way
    shape = (rows, cols, nz) if kind != "PIL" else (rows, nz, cols)
    geometry = Geometry(affine, shape, tuple(nib.aff2axcodes(affine)))
    on_grid = [from_canonical(a, geometry) for a in (hu, lesions, lungs, np.ones(hu.shape, bool))]
    anatomy = ScanAnatomy(on_grid[2], on_grid[3], np.zeros(shape, bool), "builtin")
    kept, out_lungs, nodules = keep_lesions(on_grid[1], anatomy, geometry, on_grid[0])
    expected = lesions.copy()
    expected[nodule] = 0
    assert geometry.canonical_spacing == (1.0, 1.0, 2.0)
    assert np.array_equal(kept, from_canonical(expected, geometry))
    assert nodules == [pytest.approx(np.count_nonzero(nodule) * 2.0 / 1000.0)]
    block = sanity(anatomy, out_lungs, affine, convention="HU", nodules=nodules)
    assert block["solid_nodules_left_out"] == 1 and block["solid_nodules_ml"] == round(nodules[0], 1)
    kept_without_hu, _, none = keep_lesions(on_grid[1], anatomy, geometry)
    assert np.array_equal(kept_without_hu, on_grid[1]) and none == []
    assert "solid_nodules_left_out" not in sanity(anatomy, out_lungs, affine, convention="8-bit slices")


def test_a_report_of_a_coarse_scan_says_its_lesion_map_may_miss_lesion_and_mark_vessels():
    """The sanity block gives the pixel and slice spacing of an HU volume, whatever its orientation;
    pixels coarser than 2 mm bring a resolution warning, finer ones none."""
    from slice2d.report import case_report
    from slice2d.severity import SeverityOptions

    lungs = np.zeros((20, 20, 30), np.uint8)
    lungs[3:9, 5:15, 4:26], lungs[11:17, 5:15, 4:26] = 1, 2
    lesions = np.zeros_like(lungs)
    lesions[4:7, 6:9, 10:14] = 1
    anatomy = ScanAnatomy(lungs, np.ones(lungs.shape, bool), None, "builtin")
    coarse = make_affine("RAS", (4.2, 4.0, 2.5))
    block = sanity(anatomy, lungs, coarse)
    assert block["pixel_mm"] == 4.2 and block["slice_mm"] == 2.5
    warning = case_report(lesions, lungs, None, coarse, "c", SeverityOptions(), block)["resolution_warning"]
    assert "4.2 mm" in warning and "vessels" in warning and "less of the lesion" in warning
    pil = sanity(anatomy, lungs, make_affine("PIL", (0.8, 5.0, 0.7)))  # the second voxel axis runs along S
    assert pil["pixel_mm"] == 0.8 and pil["slice_mm"] == 5.0
    for pixel, warned in ((0.7, False), (1.9, False), (2.4, True)):
        affine = make_affine("RAS", (pixel, pixel, 5.0))
        report = case_report(lesions, lungs, None, affine, "c", SeverityOptions(), sanity(anatomy, lungs, affine))
        assert ("resolution_warning" in report) == warned, pixel
    assert "pixel_mm" not in sanity(anatomy, lungs, coarse, convention="8-bit slices")


def test_stored_ct_numbers_are_told_from_hu_and_from_8_bit_exports():
    """A CT stored without its rescale intercept (air near 0, soft tissue near 1024) is shifted to
    HU; a CT in HU and a windowed 8-bit export are left alone (the export is refused later, as
    before)."""
    from slice2d.io import as_hu, stored_offset

    ph = make_phantom(shape=(64, 64, 24), spacing=(5.0, 5.0, 10.0), seed=2)
    hu = np.round(ph.image).astype(np.int16)
    stored = (hu.astype(np.int32) + 1024).clip(0, None).astype(np.uint16)
    assert stored_offset(hu) == 0 and stored_offset(stored) == 1024
    shifted, convention = as_hu(stored, "x.nii.gz")
    assert shifted.dtype == np.int16 and convention.startswith("HU + 1024")
    assert np.array_equal(shifted, hu.clip(-1024, None)) and stored.min() == 0, "the input is not modified"
    windowed = np.clip((hu + 1000) / 1400 * 255, 0, 255).astype(np.uint8)  # lung window, 8-bit
    assert stored_offset(windowed) == 0 and as_hu(windowed, "w")[1] == "HU"
    assert stored_offset(hu.astype(np.float32) + 1024) == 1024


@pytest.mark.slow
def test_predict_reads_stored_ct_numbers_as_hu(tmp_path):
    """`slice2d predict` on a CT stored as CT numbers (HU + 1024, uint16) writes the same maps as on
    the same CT in HU, says so in the report's sanity block, and leaves the input as it was."""
    write_phantoms(tmp_path / "ph", cases=1, shape=(64, 64, 24), spacing=(5.0, 5.0, 10.0), seed=1)
    data = tmp_path / "in"
    data.mkdir()
    source = nib.load(tmp_path / "ph" / "images" / "phantom_000.nii.gz")
    hu = np.round(np.asarray(source.dataobj)).astype(np.int16)
    nib.save(nib.Nifti1Image(hu, source.affine), data / "hu.nii.gz")
    stored = nib.Nifti1Image((hu.astype(np.int32) + 1024).clip(0, None).astype(np.uint16), source.affine)
    stored.header.set_slope_inter(1, 0)
    nib.save(stored, data / "stored.nii.gz")
    before = {p.name: p.read_bytes() for p in data.iterdir()}
    result = invoke("predict", data, "--out", tmp_path / "out", "--model", "checkpoints/lesions-128", "-q")
    assert result.exit_code == 0, result.output
    assert {p.name: p.read_bytes() for p in data.iterdir()} == before, "inputs untouched"
    out = tmp_path / "out"
    for sub in (".", "lungs"):
        a, b = (np.asarray(nib.load(out / sub / f"{n}.nii.gz").dataobj) for n in ("hu", "stored"))
        assert np.array_equal(a, b) and (sub == "." or a.any())
    sanity = {n: json.loads((out / "severity" / f"{n}.json").read_text())["sanity"] for n in ("hu", "stored")}
    assert sanity["hu"]["intensity"] == "HU" and sanity["stored"]["intensity"].startswith("HU + 1024")
    assert sanity["stored"]["air_outside_body_hu"] == sanity["hu"]["air_outside_body_hu"] < -900


def test_elongation_of_a_lesion_is_its_principal_spread_ratio_in_mm():
    """The moments gathered slice by slice give np.cov's spread of the voxel centres in mm (plus
    a voxel's own box): a ball reads about 1 at any spacing, a rod along a diagonal about its
    length over its width."""
    from slice2d import anatomy as a

    spacing = (0.7, 0.7, 2.5)
    r, c, z = np.mgrid[:80, :80, :30]
    mm = [r * spacing[0], c * spacing[1], z * spacing[2]]
    ball = (mm[0] - 28) ** 2 + (mm[1] - 28) ** 2 + (mm[2] - 37) ** 2 <= 12 ** 2
    t = ((mm[0] - 5) + (mm[1] - 5)) / np.sqrt(2)  # along the in-plane diagonal
    across = np.abs((mm[0] - 5) - (mm[1] - 5)) / np.sqrt(2)
    rod = (t >= 0) & (t <= 40) & (across <= 3) & (np.abs(mm[2] - 37) <= 3)
    hu = np.zeros(ball.shape, np.int16)
    lungs = np.ones(ball.shape, np.uint8)
    for mask, low, high in ((ball, 0.95, 1.15), (rod, 4.0, 8.0)):
        pieces, grouped, _ = a._lesions_across_slices(mask.astype(np.uint8), hu, lungs, spacing)
        assert len(grouped) == 1
        got = a._elongation(pieces[grouped[0]], spacing)
        points = np.argwhere(mask) * np.array(spacing)
        spread = np.cov(points.T, bias=True) + np.diag(np.square(spacing)) / 12
        want = np.sqrt(np.linalg.eigvalsh(spread)[-1] / np.linalg.eigvalsh(spread)[0])
        assert got == pytest.approx(want, rel=1e-9)
        assert low <= got <= high
