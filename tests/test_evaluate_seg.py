"""`evaluate` with DICOM SEG label maps (slice2d.dicom_seg.read_seg): a SEG written from maps on a
phantom series' grid, scored against NIfTI maps of the same grid.

Expected Dice values are counted here with numpy on the maps the SEG was written from, never on
what slice2d reads back from the SEG.
"""

from __future__ import annotations

import csv
import logging
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from conftest import assert_user_error, invoke, no_output
from nibabel.orientations import apply_orientation, inv_ornt_aff
from test_dicom_roundtrip import ORIENTATIONS, lps_affine, phantom
from test_dicom_seg import random_maps, write_series

from slice2d.dicom import load_series
from slice2d.dicom_seg import read_seg, write_case_seg
from slice2d.io import InputError

pytest.importorskip("highdicom", reason="the dicom-seg extra (highdicom) is not installed")


@pytest.fixture(scope="module")
def case(tmp_path_factory) -> dict:
    """A feet-first phantom series (9x7x6: frames of 63 pixels, not whole bytes), its image as
    slice2d reads it, random lesion (3-class), lung and lobe maps on that grid and their SEG."""
    tmp = tmp_path_factory.mktemp("seg")
    affine = lps_affine(ORIENTATIONS["feet-first"])
    paths = write_series(phantom((9, 7, 6)), affine, tmp / "series")
    img = load_series(tmp / "series")
    maps = random_maps(img.shape, seed=3)
    seg = write_case_seg(tmp / "series", img, maps, tmp / "out", "case", lesion_classes=3)
    return {"img": img, "maps": maps, "seg": seg, "ct_file": paths[0]}


def folder_with(path: Path, folder: Path, name: str = "case") -> Path:
    """``folder`` holding a copy of the file ``path`` as ``<name><suffix>``."""
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(path, folder / f"{name}{''.join(path.suffixes)}")
    return folder


def nifti_folder(data: np.ndarray, affine: np.ndarray, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data.astype(np.uint8), affine), folder / "case.nii.gz")
    return folder


def dice_by_label(metrics_csv: Path) -> dict[int, float]:
    with open(metrics_csv) as f:
        return {int(row["label"]): float(row["dice"]) for row in csv.DictReader(f)}


def expected_dice(a: np.ndarray, b: np.ndarray, value: int) -> float:
    pa, pb = a == value, b == value
    return 2 * np.count_nonzero(pa & pb) / (np.count_nonzero(pa) + np.count_nonzero(pb))


@pytest.mark.parametrize("kind, values", [("lesions", (1, 2)), ("lungs", (1, 2)), ("lobes", (1, 2, 3, 4, 5))])
def test_seg_read_back_onto_each_grid_it_lies_on(case: dict, kind: str, values: tuple) -> None:
    """Onto slice2d's grid of the series, and onto the same voxels with the array's first two axes
    swapped and two axes reversed: the map the SEG was written from, voxel for voxel."""
    img, expected = case["img"], case["maps"][kind]
    np.testing.assert_array_equal(read_seg(case["seg"], img, kind), expected)
    swap = np.array([[1, -1], [0, 1], [2, -1]])  # array axis 0 -> 1 reversed, 1 -> 0, 2 reversed
    data = apply_orientation(expected, swap)
    affine = img.affine @ inv_ornt_aff(swap, expected.shape)
    assert data.shape == (7, 9, 6)
    np.testing.assert_array_equal(read_seg(case["seg"], nib.Nifti1Image(data, affine), kind), data)
    assert set(np.unique(expected)) == {0, *values}


@pytest.mark.parametrize("seg_side", ["pred", "ref"])
def test_evaluate_a_seg_against_the_map_it_came_from(case: dict, tmp_path: Path, seg_side: str) -> None:
    img, lungs = case["img"], case["maps"]["lungs"]
    folders = {seg_side: folder_with(case["seg"], tmp_path / "seg"),
               ("ref" if seg_side == "pred" else "pred"): nifti_folder(lungs, img.affine, tmp_path / "nifti")}
    result = invoke("evaluate", "--pred", folders["pred"], "--ref", folders["ref"], "--out", tmp_path / "eval",
                    "--seg-segments", "lungs", "-q")
    assert result.exit_code == 0, result.output
    assert dice_by_label(tmp_path / "eval" / "metrics.csv") == {1: 1.0, 2: 1.0}


def test_evaluate_a_seg_against_an_altered_map(case: dict, tmp_path: Path) -> None:
    """The reference lesion map shifted by one voxel along the rows: Dice as counted on the maps."""
    img, lesions = case["img"], case["maps"]["lesions"]
    shifted = np.zeros_like(lesions)
    shifted[:, 1:] = lesions[:, :-1]
    nifti_folder(shifted, img.affine, tmp_path / "ref")
    result = invoke("evaluate", "--pred", folder_with(case["seg"], tmp_path / "pred"), "--ref", tmp_path / "ref",
                    "--out", tmp_path / "eval", "-q")
    assert result.exit_code == 0, result.output
    dice = dice_by_label(tmp_path / "eval" / "metrics.csv")
    assert dice == pytest.approx({v: expected_dice(lesions, shifted, v) for v in (1, 2)}, abs=1e-12)
    assert max(dice.values()) < 0.6


def test_segments_are_recognised_by_their_codes(case: dict, tmp_path: Path) -> None:
    """Ground-glass and consolidation codes swapped between segments 1 and 2: labels follow the codes."""
    seg = pydicom.dcmread(case["seg"])
    first, second = (item.SegmentedPropertyTypeCodeSequence for item in seg.SegmentSequence[:2])
    seg.SegmentSequence[0].SegmentedPropertyTypeCodeSequence = second
    seg.SegmentSequence[1].SegmentedPropertyTypeCodeSequence = first
    seg.save_as(tmp_path / "swapped.dcm")
    lesions = case["maps"]["lesions"]
    swapped = np.choose(lesions, [0, 2, 1]).astype(np.uint8)
    np.testing.assert_array_equal(read_seg(tmp_path / "swapped.dcm", case["img"], "lesions"), swapped)


def foreign_codes(seg: pydicom.Dataset) -> pydicom.Dataset:
    """``seg`` with codes of a local scheme in place of every segment's property type."""
    for n, item in enumerate(seg.SegmentSequence):
        code = item.SegmentedPropertyTypeCodeSequence[0]
        code.CodingSchemeDesignator, code.CodeValue = "99LOCAL", f"X{n}"
        code.pop("SegmentedPropertyTypeModifierCodeSequence", None)
    return seg


def test_another_tools_codes_give_segment_numbers(case: dict, tmp_path: Path, caplog) -> None:
    """Codes slice2d does not know: each segment's number is its label value, with a warning."""
    seg = foreign_codes(pydicom.dcmread(case["seg"]))
    kept = [i for i, item in enumerate(seg.PerFrameFunctionalGroupsSequence)
            if item.SegmentIdentificationSequence[0].ReferencedSegmentNumber in (1, 2)]
    seg.SegmentSequence = seg.SegmentSequence[:2]  # the lesion segments alone: they do not overlap
    frames = seg.pixel_array[kept]
    seg.PerFrameFunctionalGroupsSequence = [seg.PerFrameFunctionalGroupsSequence[i] for i in kept]
    seg.NumberOfFrames = len(kept)
    seg.PixelData = np.packbits(frames.ravel(), bitorder="little").tobytes()
    seg.save_as(tmp_path / "foreign.dcm")
    with caplog.at_level(logging.WARNING, logger="slice2d.dicom_seg"):
        back = read_seg(tmp_path / "foreign.dcm", case["img"], "lobes")  # no lobe codes: numbers, not an error
    np.testing.assert_array_equal(back, case["maps"]["lesions"])
    assert "segment codes are not slice2d's; label value = segment number: 1 'Ground-glass opacity'" in caplog.text


def test_overlapping_segments_of_different_labels_are_refused(case: dict, tmp_path: Path) -> None:
    """Another tool's codes on all nine segments: lesions, lungs and lobes overlap, and a label map
    cannot hold them."""
    foreign_codes(pydicom.dcmread(case["seg"])).save_as(tmp_path / "foreign.dcm")
    with pytest.raises(InputError, match=r"foreign.dcm: segment \d overlaps a segment of another label"):
        read_seg(tmp_path / "foreign.dcm", case["img"])


def test_a_missing_map_kind_is_named(case: dict, tmp_path: Path) -> None:
    write_series(phantom((6, 5, 4)), lps_affine(np.eye(3)), tmp_path / "series")
    img = load_series(tmp_path / "series")
    lesion_only = write_case_seg(tmp_path / "series", img, {"lesions": random_maps(img.shape)["lesions"]},
                                 tmp_path / "out", "case", lesion_classes=3)
    with pytest.raises(InputError, match="holds no lobes segments .* choose --seg-segments lesions"):
        read_seg(lesion_only, img, "lobes")


def moved(affine: np.ndarray, axis: int, mm: float) -> np.ndarray:
    out = affine.copy()
    out[axis, 3] += mm
    return out


@pytest.mark.parametrize("change, message", [
    ("between-slices", "not on one of its slices"),
    ("cropped", "frames are 7x9 pixels, the grid's slices 7x8"),
    ("pixel-spacing", "do not run along the voxel axes of the grid"),
    ("slice-spacing", "not on one of its slices"),
])
def test_a_seg_off_the_grid_is_one_line(case: dict, tmp_path: Path, change: str, message: str) -> None:
    img, lesions = case["img"], case["maps"]["lesions"]
    data, affine = {
        "between-slices": (lesions, moved(img.affine, 2, 1.0)),  # 0.4 of the 2.5 mm slice spacing
        "cropped": (lesions[:8], img.affine),
        "pixel-spacing": (lesions, img.affine @ np.diag([1.5, 1.0, 1.0, 1.0])),
        "slice-spacing": (lesions, img.affine @ np.diag([1.0, 1.0, 2.0, 1.0])),
    }[change]
    nifti_folder(data, affine, tmp_path / "ref")
    result = invoke("evaluate", "--pred", folder_with(case["seg"], tmp_path / "pred"), "--ref", tmp_path / "ref",
                    "--out", tmp_path / "eval")
    assert_user_error(result, "case.dcm (compared with", message)
    assert no_output(tmp_path / "eval")


@pytest.mark.parametrize("content, message", [
    ("ct", "case.dcm: not a DICOM Segmentation object (CT Image Storage)"),
    ("text", "case.dcm: cannot be read as DICOM"),
    ("seg-without-frame-groups", "case.dcm: the DICOM SEG's segments or frames cannot be read"),
])
def test_a_dcm_that_is_no_seg_is_one_line(case: dict, tmp_path: Path, content: str, message: str) -> None:
    (tmp_path / "pred").mkdir()
    if content == "ct":
        shutil.copy(case["ct_file"], tmp_path / "pred" / "case.dcm")
    elif content == "seg-without-frame-groups":
        seg = pydicom.dcmread(case["seg"])
        del seg.PerFrameFunctionalGroupsSequence
        seg.save_as(tmp_path / "pred" / "case.dcm")
    else:
        (tmp_path / "pred" / "case.dcm").write_text("not DICOM\n")
    nifti_folder(case["maps"]["lesions"], case["img"].affine, tmp_path / "ref")
    result = invoke("evaluate", "--pred", tmp_path / "pred", "--ref", tmp_path / "ref", "--out", tmp_path / "eval")
    assert_user_error(result, message)
    assert no_output(tmp_path / "eval")


def test_a_seg_on_both_sides_is_refused(case: dict, tmp_path: Path) -> None:
    result = invoke("evaluate", "--pred", folder_with(case["seg"], tmp_path / "pred"),
                    "--ref", folder_with(case["seg"], tmp_path / "ref"), "--out", tmp_path / "eval")
    assert_user_error(result, "both are DICOM SEG", "give the predictions or the references as NIfTI")
    assert no_output(tmp_path / "eval")


def test_a_case_as_volume_and_seg_is_refused(case: dict, tmp_path: Path) -> None:
    nifti_folder(case["maps"]["lesions"], case["img"].affine, tmp_path / "pred")
    folder_with(case["seg"], tmp_path / "pred")
    nifti_folder(case["maps"]["lesions"], case["img"].affine, tmp_path / "ref")
    result = invoke("evaluate", "--pred", tmp_path / "pred", "--ref", tmp_path / "ref", "--out", tmp_path / "eval")
    assert_user_error(result, "case case is there twice, as case.nii.gz and as a DICOM SEG (case.dcm)")


@pytest.mark.parametrize("seg_type", ["FRACTIONAL", "LABELMAP"])
def test_fractional_and_labelmap_segs(case: dict, tmp_path: Path, seg_type: str) -> None:
    """The lesion map as a FRACTIONAL SEG (in: at least half the maximum; 0.4 elsewhere stays out)
    and as a LABELMAP SEG (pixel values are segment numbers), written by highdicom."""
    import highdicom as hd

    from slice2d.dicom_seg import _description, lesion_segments, source_datasets

    lesions = case["maps"]["lesions"]
    frames = lesions.transpose(2, 1, 0)  # (slices, rows, columns)
    if seg_type == "FRACTIONAL":
        pixels = np.stack([np.where(frames == v, 0.6, 0.4) for v in (1, 2)], axis=-1).astype(np.float32)
    else:
        pixels = frames
    sources = source_datasets(case["ct_file"].parent, case["img"])
    descriptions = [_description(n, s, hd.sr.CodedConcept("123109", "DCM", "Manual Processing"), "test")
                    for n, s in enumerate(lesion_segments(3), 1)]
    seg = hd.seg.Segmentation(
        source_images=sources, pixel_array=pixels, segmentation_type=seg_type, segment_descriptions=descriptions,
        series_instance_uid=hd.UID(), series_number=2, sop_instance_uid=hd.UID(), instance_number=1,
        manufacturer="test", manufacturer_model_name="test", software_versions="0", device_serial_number="0")
    seg.save_as(tmp_path / "case.dcm")
    assert pydicom.dcmread(tmp_path / "case.dcm", stop_before_pixels=True).SegmentationType == seg_type
    np.testing.assert_array_equal(read_seg(tmp_path / "case.dcm", case["img"], "lesions"), lesions)
