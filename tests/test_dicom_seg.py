"""DICOM SEG out (slice2d.dicom_seg): a phantom series written slice by slice with pydicom, maps
on the grid slice2d reads from it, the SEG written and read back.

The read-back is independent of how slice2d matched source files to slices: each SEG frame names
its source instance (DerivationImageSequence) and its segment; the phantom writer stored slice k
of the phantom as InstanceNumber k + 1, so every frame goes back to its phantom slice by that,
and the maps are brought onto the phantom's grid by nibabel's orientation tools.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from conftest import CT_SAMPLES, assert_user_error, invoke, no_output
from test_dicom_roundtrip import ORIENTATIONS, lps_affine, on_grid_of, phantom, write_dicom

from slice2d.dicom import load_series
from slice2d.dicom_seg import LUNG_SEGMENTS, lesion_segments, lobe_segments, source_datasets, write_case_seg
from slice2d.io import InputError
from slice2d.severity import LOBE_PRESETS

hd = pytest.importorskip("highdicom", reason="the dicom-seg extra (highdicom) is not installed")

EXPECTED = [  # segment label, category, type, laterality modifier (None: none)
    ("Ground-glass opacity", "49755003", ("DCM", "112120"), None),
    ("Consolidation", "49755003", ("SCT", "95436008"), None),
    ("Right lung", "91723000", ("SCT", "39607008"), "24028007"),
    ("Left lung", "91723000", ("SCT", "39607008"), "7771000"),
    ("Right upper lobe", "91723000", ("SCT", "45653009"), "24028007"),
    ("Right middle lobe", "91723000", ("SCT", "72481006"), None),
    ("Right lower lobe", "91723000", ("SCT", "90572001"), "24028007"),
    ("Left upper lobe", "91723000", ("SCT", "45653009"), "7771000"),
    ("Left lower lobe", "91723000", ("SCT", "90572001"), "7771000"),
]


def write_series(volume: np.ndarray, affine: np.ndarray, folder: Path) -> list[Path]:
    """``test_dicom_roundtrip.write_dicom``, plus the FrameOfReferenceUID that CT images carry."""
    paths = write_dicom(volume, affine, folder)
    for path in paths:
        ds = pydicom.dcmread(path)
        ds.FrameOfReferenceUID = "1.2.826.0.1.3680043.8.498.7"
        ds.save_as(path, enforce_file_format=True)
    return paths


def random_maps(shape, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"lesions": rng.integers(0, 3, shape).astype(np.uint8), "lungs": rng.integers(0, 3, shape).astype(np.uint8),
            "lobes": rng.integers(0, 6, shape).astype(np.uint8)}


def seg_on_phantom_grid(seg_path: Path, source_paths: list[Path], shape) -> dict[int, np.ndarray]:
    """Each segment of a SEG as a mask on the phantom's grid, read with pydicom alone: frame ->
    its source instance -> that file's InstanceNumber - 1 = the phantom slice."""
    slice_of = {}
    for path in source_paths:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        slice_of[ds.SOPInstanceUID] = int(ds.InstanceNumber) - 1
    seg = pydicom.dcmread(seg_path)
    frames = seg.pixel_array.reshape(-1, int(seg.Rows), int(seg.Columns))
    masks = {int(item.SegmentNumber): np.zeros(shape, dtype=bool) for item in seg.SegmentSequence}
    for frame, item in zip(frames, seg.PerFrameFunctionalGroupsSequence, strict=True):
        number = int(item.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
        source = item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        masks[number][:, :, slice_of[source]] = frame.T > 0  # frame (rows, columns) = voxels (columns, rows)
    return masks


@pytest.mark.parametrize("orientation", ["oblique", "feet-first", "stacked-against-normal"])
def test_seg_maps_back_onto_the_source_grid(tmp_path: Path, orientation: str) -> None:
    affine = lps_affine(ORIENTATIONS[orientation])
    paths = write_series(phantom((9, 7, 6)), affine, tmp_path / "series")
    img = load_series(tmp_path / "series")
    maps = random_maps(img.shape)
    out = write_case_seg(tmp_path / "series", img, maps, tmp_path / "out", "case", lesion_classes=3)
    assert out == tmp_path / "out" / "dicom-seg" / "case.dcm"

    masks = seg_on_phantom_grid(out, paths, (9, 7, 6))
    segments = lesion_segments(3) + LUNG_SEGMENTS + lobe_segments(LOBE_PRESETS["slice2d"])
    assert len(masks) == len(segments) == 9
    for number, segment in enumerate(segments, 1):
        on_phantom, _ = on_grid_of(nib.Nifti1Image(maps[segment.source], img.affine), affine)
        np.testing.assert_array_equal(masks[number], on_phantom == segment.value, err_msg=segment.label)

    # highdicom's own read-back, frame by source instance in slice2d's slice order
    order = [ds.SOPInstanceUID for ds in source_datasets(tmp_path / "series", img)]
    pixels = hd.seg.segread(out).get_pixels_by_source_instance(order, assert_missing_frames_are_empty=True)
    for number, segment in enumerate(segments, 1):
        np.testing.assert_array_equal(pixels[..., number - 1].transpose(2, 1, 0) > 0,
                                      maps[segment.source] == segment.value, err_msg=segment.label)


def test_seg_references_the_series_and_codes_each_segment(tmp_path: Path) -> None:
    paths = write_series(phantom((6, 5, 4)), lps_affine(np.eye(3)), tmp_path / "series")
    img = load_series(tmp_path / "series")
    out = write_case_seg(tmp_path / "series", img, random_maps(img.shape), tmp_path / "out", "case", lesion_classes=3)
    seg = pydicom.dcmread(out)
    sources = [pydicom.dcmread(p, stop_before_pixels=True) for p in paths]

    assert seg.SOPClassUID == "1.2.840.10008.5.1.4.1.1.66.4" and seg.SegmentationType == "BINARY"
    assert seg.StudyInstanceUID == sources[0].StudyInstanceUID
    assert seg.FrameOfReferenceUID == sources[0].FrameOfReferenceUID
    assert seg.SeriesInstanceUID != sources[0].SeriesInstanceUID
    (referenced,) = seg.ReferencedSeriesSequence
    assert referenced.SeriesInstanceUID == sources[0].SeriesInstanceUID
    assert {i.ReferencedSOPInstanceUID for i in referenced.ReferencedInstanceSequence} == \
        {ds.SOPInstanceUID for ds in sources}

    for item, (label, category, (scheme, code), modifier) in zip(seg.SegmentSequence, EXPECTED, strict=True):
        assert item.SegmentLabel == label
        assert item.SegmentedPropertyCategoryCodeSequence[0].CodeValue == category
        kind = item.SegmentedPropertyTypeCodeSequence[0]
        assert (kind.CodingSchemeDesignator, kind.CodeValue) == (scheme, code), label
        modifiers = [m.CodeValue for m in kind.get("SegmentedPropertyTypeModifierCodeSequence", [])]
        assert modifiers == ([modifier] if modifier else []), label
        assert item.SegmentAlgorithmType == "AUTOMATIC"


def test_binary_lesion_model_gives_one_infection_segment(tmp_path: Path) -> None:
    write_series(phantom((6, 5, 4)), lps_affine(np.eye(3)), tmp_path / "series")
    img = load_series(tmp_path / "series")
    lesions = (random_maps(img.shape)["lesions"] > 1).astype(np.uint8)
    seg = pydicom.dcmread(write_case_seg(tmp_path / "series", img, {"lesions": lesions, "lobes": None},
                                         tmp_path / "out", "case", lesion_classes=2))
    (item,) = seg.SegmentSequence
    assert item.SegmentLabel == "Infection"
    assert item.SegmentedPropertyTypeCodeSequence[0].CodeValue == "52988006"


def test_seg_of_another_grid_is_refused(tmp_path: Path) -> None:
    """Frames are matched to slices by position: a map grid the series does not lie on is refused."""
    write_series(phantom((6, 5, 4)), lps_affine(np.eye(3)), tmp_path / "series")
    img = load_series(tmp_path / "series")
    moved = img.affine.copy()
    moved[2, 3] += 1.0  # 0.4 slices (2.5 mm apart) off
    shifted = nib.Nifti1Image(np.zeros(img.shape, np.int16), moved)
    with pytest.raises(InputError, match="lies slice for slice on the grid"):
        write_case_seg(tmp_path / "series", shifted, random_maps(img.shape), tmp_path / "out", "case")
    assert no_output(tmp_path / "out")


def test_cohort_cases_in_one_folder_reference_their_own_series(tmp_path: Path) -> None:
    """Two studies' series on the same grid, in one folder: each case's SEG references its own."""
    from slice2d.dicom import find_cases, load_image

    for n, study in enumerate(("1.2.826.0.1.3680043.8.498.11", "1.2.826.0.1.3680043.8.498.12")):
        paths = write_dicom(phantom((6, 5, 4), seed=n), lps_affine(np.eye(3)), tmp_path / "both", study_uid=study,
                            number=n + 1, seed=n)
        for path in paths:  # distinct names in the shared folder
            ds = pydicom.dcmread(path)
            ds.FrameOfReferenceUID = "1.2.826.0.1.3680043.8.498.7"
            ds.save_as(path.with_name(f"s{n}-{path.name}"), enforce_file_format=True)
            path.unlink()
    cases = find_cases(tmp_path / "both")
    assert len(cases) == 2
    with pytest.raises(InputError, match="all lie on the grid that was read; choose one with --series UID"):
        source_datasets(tmp_path / "both", load_image(cases[0]))  # the folder alone cannot say which
    for case in cases:
        img = load_image(case)
        seg = pydicom.dcmread(write_case_seg(case, img, random_maps(img.shape), tmp_path / "out", case.case))
        (referenced,) = seg.ReferencedSeriesSequence
        assert referenced.SeriesInstanceUID == case.series.uid
        assert seg.StudyInstanceUID == case.series.study_uid


@pytest.mark.skipif(shutil.which("dciodvfy") is None, reason="dciodvfy (Debian package dicom3tools) is not installed")
def test_seg_passes_dciodvfy(tmp_path: Path) -> None:
    """The SEG IOD checker of dicom3tools finds no error (warnings about the phantom's empty study
    date and time are expected)."""
    write_series(phantom((6, 5, 4)), lps_affine(np.eye(3)), tmp_path / "series")
    img = load_series(tmp_path / "series")
    out = write_case_seg(tmp_path / "series", img, random_maps(img.shape), tmp_path / "out", "case", lesion_classes=3)
    report = subprocess.run(["dciodvfy", str(out)], capture_output=True, text=True).stderr
    assert "Segmentation" in report
    assert not [line for line in report.splitlines() if line.startswith("Error")], report


def test_dicom_seg_of_a_nifti_input_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "scan.nii.gz"
    nib.save(nib.Nifti1Image(phantom((6, 5, 4)), lps_affine(np.eye(3))), path)
    result = invoke("predict", path, "--out", tmp_path / "out", "--model", "checkpoints/lesions-128", "-q",
                    "--dicom-seg")
    assert_user_error(result, "scan.nii.gz: --dicom-seg needs DICOM series as input")
    assert no_output(tmp_path / "out")


@pytest.mark.slow
def test_predict_writes_a_seg_equal_to_its_maps(tmp_path: Path) -> None:
    """`predict --dicom-seg` on a phantom chest series: the SEG's lesion, lung and lobe segments are
    the written NIfTI maps (and the given lobe map) voxel for voxel."""
    from slice2d.synth import make_phantom

    ph = make_phantom(shape=(64, 64, 24), spacing=(5.0, 5.0, 10.0), seed=1)
    write_series(np.rint(ph.image).astype(np.int16), ph.affine, tmp_path / "series-1")
    img = load_series(tmp_path / "series-1")
    lobes, _ = on_grid_of(nib.Nifti1Image(ph.lobes, ph.affine), img.affine)
    (tmp_path / "lobes").mkdir()
    nib.save(nib.Nifti1Image(lobes, img.affine), tmp_path / "lobes" / "series-1.nii.gz")
    result = invoke("predict", tmp_path / "series-1", "--out", tmp_path / "out", "--model", "checkpoints/lesions-128",
                    "--lobes", tmp_path / "lobes", "--dicom-seg", "-q")
    assert result.exit_code == 0, result.output
    seg = hd.seg.segread(tmp_path / "out" / "dicom-seg" / "series-1.dcm")
    order = [ds.SOPInstanceUID for ds in source_datasets(tmp_path / "series-1", img)]
    pixels = seg.get_pixels_by_source_instance(order, assert_missing_frames_are_empty=True).transpose(2, 1, 0, 3) > 0
    maps = {"lesions": tmp_path / "out" / "series-1.nii.gz", "lungs": tmp_path / "out" / "lungs" / "series-1.nii.gz",
            "lobes": tmp_path / "lobes" / "series-1.nii.gz"}
    maps = {kind: np.asanyarray(nib.load(path).dataobj) for kind, path in maps.items()}
    assert maps["lungs"].any() and maps["lesions"].any()
    # a binary lesion model's map, split into ground-glass and consolidation by density
    segments = lesion_segments(3) + LUNG_SEGMENTS + lobe_segments(LOBE_PRESETS["slice2d"])
    assert [seg.get_segment_description(n).segment_label for n in seg.segment_numbers] == [s.label for s in segments]
    for n, segment in enumerate(segments):
        np.testing.assert_array_equal(pixels[..., n], maps[segment.source] == segment.value, err_msg=segment.label)


def test_real_series_seg_reads_back(tmp_path: Path) -> None:
    """A real feet-first series (LIDC-IDRI-0001): maps made from its HU (dense voxels as binary
    lesions, air-like voxels split into left and right halves as lungs) as a SEG, read back voxel
    for voxel; every instance referenced."""
    folder = CT_SAMPLES.parent / "dicom" / "lidc-idri-0001"
    if not folder.is_dir():
        pytest.skip(f"real DICOM series not found at {folder} (../shared/data is absent outside the dev setup)")
    img = load_series(folder)
    hu = np.asanyarray(img.dataobj)
    half = np.arange(img.shape[0])[:, None, None] < img.shape[0] // 2
    maps = {"lesions": (hu > 100).astype(np.uint8), "lungs": np.where(hu < -500, np.where(half, 1, 2), 0).astype(np.uint8)}
    out = write_case_seg(folder, img, maps, tmp_path, "lidc", lesion_classes=2)
    sources = source_datasets(folder, img)
    seg = hd.seg.segread(out)
    assert {uid for _, _, uid in seg.get_source_image_uids()} == {ds.SOPInstanceUID for ds in sources}
    pixels = seg.get_pixels_by_source_instance([ds.SOPInstanceUID for ds in sources],
                                               assert_missing_frames_are_empty=True)
    for n, segment in enumerate(lesion_segments(2) + LUNG_SEGMENTS):
        np.testing.assert_array_equal(pixels[..., n].transpose(2, 1, 0) > 0, maps[segment.source] == segment.value,
                                      err_msg=segment.label)
