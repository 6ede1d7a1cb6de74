"""Round trips: phantom volumes written as DICOM series with pydicom, read back by slice2d.dicom.

Each phantom is a NIfTI-style volume (X, Y, Z) with a RAS+ affine. ``write_dicom`` writes it the
way DICOM defines a series (PS 3.3 C.7.6.2): one file per slice, ImagePositionPatient the LPS
centre of the slice's first pixel, ImageOrientationPatient the row and column cosines; file
names shuffled against position. Reading it back must give the phantom voxel for voxel once the
axes are brought into the phantom's order (the reader stacks slices along the slice normal,
which may run against the phantom's third axis), on exactly the phantom's affine.

The same writer builds the inputs of the commands: bad DICOM input through ``predict``, a folder
tree of studies as a cohort, ``predict`` on a series against its NIfTI, and DICOM case folders in
``prepare`` and ``severity --image``.
"""

from __future__ import annotations

import random
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from conftest import assert_user_error, digest, invoke, no_output
from nibabel.orientations import apply_orientation, inv_ornt_aff, io_orientation, ornt_transform
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.pixels import pixel_array
from pydicom.pixels.decoders.base import get_decoder
from pydicom.pixels.encoders.base import get_encoder
from pydicom.uid import (
    CTImageStorage,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLSLossless,
    RLELossless,
    generate_uid,
)

from slice2d.dicom import load_series

LPS = np.diag([-1.0, -1.0, 1.0, 1.0])  # RAS <-> LPS (its own inverse)


def rotation(z_deg: float, x_deg: float) -> np.ndarray:
    z, x = np.radians(z_deg), np.radians(x_deg)
    rz = np.array([[np.cos(z), -np.sin(z), 0], [np.sin(z), np.cos(z), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(x), -np.sin(x)], [0, np.sin(x), np.cos(x)]])
    return rz @ rx


def lps_affine(axes: np.ndarray, spacing=(0.8, 0.7, 2.5), origin=(-120.0, 90.0, -310.0)) -> np.ndarray:
    """RAS+ affine of a grid whose voxel axes run along the LPS unit vectors ``axes`` (columns)."""
    lps = np.eye(4)
    lps[:3, :3] = np.asarray(axes, float) @ np.diag(spacing)
    lps[:3, 3] = origin
    return LPS @ lps


# voxel axes (i, j, k) as LPS directions: DICOM's row, column and stacking directions
ORIENTATIONS = {
    "lps-head-first": np.eye(3),  # the scanner's usual storage: rows run posterior, columns left
    "ras": np.diag([-1.0, -1.0, 1.0]),  # rows run anterior, columns right
    "feet-first": np.diag([-1.0, 1.0, -1.0]),  # FFS: columns run right, slices stacked downwards
    "stacked-against-normal": np.diag([1.0, 1.0, -1.0]),  # the normal points up, the third axis down
    "coronal": np.array([[1.0, 0, 0], [0, 0, 1], [0, -1, 0]]),  # rows L, columns I, slices P
    "sagittal": np.array([[0, 0, -1.0], [1, 0, 0], [0, -1, 0]]),  # rows P, columns I, slices R
    "oblique": rotation(20, 12),
}


def phantom(shape=(7, 5, 6), seed: int = 0) -> np.ndarray:
    """HU values that differ from voxel to voxel (any mix-up of voxels shows)."""
    return np.random.default_rng(seed).integers(-1024, 2000, shape).astype(np.int16)


def write_dicom(volume: np.ndarray, affine: np.ndarray, folder: Path, syntax: str = ExplicitVRLittleEndian,
                series_uid: str | None = None, study_uid: str = "1.2.826.0.1.3680043.8.498.1", number: int = 3,
                description: str = "PHANTOM", seed: int = 0) -> list[Path]:
    """``volume`` (HU, int16) on ``affine`` as one DICOM file per slice k = volume[:, :, k].

    Stored values are HU + 1024 (intercept -1024); each file is named in a shuffled order."""
    lps = LPS @ affine
    spacing = np.linalg.norm(lps[:3, :3], axis=0)
    row_cos, col_cos = lps[:3, 0] / spacing[0], lps[:3, 1] / spacing[1]
    series_uid = series_uid or generate_uid()
    folder.mkdir(parents=True, exist_ok=True)
    names = list(range(volume.shape[2]))
    random.Random(seed).shuffle(names)
    paths = []
    for k in range(volume.shape[2]):
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
        ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, ds.file_meta.MediaStorageSOPInstanceUID
        ds.Modality, ds.ImageType = "CT", ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.PatientName, ds.PatientID, ds.PatientBirthDate = "Doe^Jane", "PAT-0042", "19500101"
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
        ds.SeriesNumber, ds.SeriesDescription, ds.InstanceNumber = number, description, k + 1
        ds.ImagePositionPatient = [float(v) for v in (lps @ [0, 0, k, 1])[:3]]
        ds.ImageOrientationPatient = [float(v) for v in (*row_cos, *col_cos)]
        ds.PixelSpacing = [float(spacing[1]), float(spacing[0])]  # (between rows, between columns)
        ds.SliceThickness = float(spacing[2])
        ds.Rows, ds.Columns = volume.shape[1], volume.shape[0]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleSlope, ds.RescaleIntercept = 1, -1024
        ds.PixelData = (volume[:, :, k].T.astype(np.int32) + 1024).astype(np.int16).tobytes()  # (rows, columns)
        path = folder / f"IM{names[k]:04d}"
        if syntax in (ImplicitVRLittleEndian, DeflatedExplicitVRLittleEndian):
            ds.file_meta.TransferSyntaxUID = syntax
        elif syntax != ExplicitVRLittleEndian:
            ds.compress(syntax)
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def on_grid_of(img: nib.Nifti1Image, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``img``'s data and affine with its axes permuted and flipped into the order of ``affine``'s
    axes: the same voxels, as the phantom's array (exact: no resampling)."""
    transform = ornt_transform(io_orientation(img.affine), io_orientation(affine))
    data = apply_orientation(np.asanyarray(img.dataobj), transform)
    return data, img.affine @ inv_ornt_aff(transform, img.shape)


@pytest.mark.parametrize("name", ORIENTATIONS)
def test_series_reads_back_voxel_for_voxel(tmp_path: Path, name: str) -> None:
    volume, affine = phantom(), lps_affine(ORIENTATIONS[name])
    write_dicom(volume, affine, tmp_path / "series")
    img = load_series(tmp_path / "series")
    data, read_affine = on_grid_of(img, affine)
    np.testing.assert_array_equal(data, volume)
    np.testing.assert_allclose(read_affine, affine, atol=1e-6)
    # the reader's own layout: columns, rows, slices sorted along the normal (row x column cosine)
    assert img.shape == (volume.shape[0], volume.shape[1], volume.shape[2])
    lps = LPS @ img.affine
    normal = np.cross(lps[:3, 0], lps[:3, 1])
    assert normal @ lps[:3, 2] > 0


SYNTAXES = [ImplicitVRLittleEndian, DeflatedExplicitVRLittleEndian, RLELossless, JPEGLSLossless, JPEG2000Lossless]


@pytest.mark.parametrize("syntax", SYNTAXES, ids=[s.name for s in SYNTAXES])
def test_each_transfer_syntax_reads_back_voxel_for_voxel(tmp_path: Path, syntax: str) -> None:
    """Encoded here with pydicom's own RLE encoder, pyjpegls (JPEG-LS) and pylibjpeg-openjpeg
    (JPEG 2000); decoded by the pylibjpeg plugins slice2d declares. JPEG Lossless (process 14) has
    no encoder for pydicom: its decoding is checked on the real RICORD series (test_dicom.py)."""
    if syntax.is_compressed and not get_encoder(syntax).is_available:
        pytest.skip(f"no encoder for {syntax.name} installed (pip install pyjpegls / pylibjpeg-openjpeg)")
    volume, affine = phantom(shape=(40, 36, 3), seed=1), lps_affine(ORIENTATIONS["oblique"])
    volume[0, :, 0] = -1024  # air and the largest values survive the codec
    volume[1, :, 0] = 3071
    paths = write_dicom(volume, affine, tmp_path / "series", syntax=syntax)
    assert all(pydicom.dcmread(p, stop_before_pixels=True).file_meta.TransferSyntaxUID == syntax for p in paths)
    if syntax.is_compressed:  # the decoder slice2d declares (pydicom may pick another installed one)
        assert "pylibjpeg" in get_decoder(syntax).available_plugins
        by_name = {int(pydicom.dcmread(p).InstanceNumber): p for p in paths}
        for k in range(volume.shape[2]):
            decoded = pixel_array(by_name[k + 1], decoding_plugin="pylibjpeg")
            np.testing.assert_array_equal(decoded.astype(np.int32) - 1024, volume[:, :, k].T)
    data, read_affine = on_grid_of(load_series(tmp_path / "series"), affine)
    np.testing.assert_array_equal(data, volume)
    np.testing.assert_allclose(read_affine, affine, atol=1e-6)


# ---------------------------------------------------------------- bad input through the CLI


def _predict(source: Path, out: Path, *extra: str):
    return invoke("predict", source, "--out", out, "--model", "checkpoints/lesions-128", "-q", *extra)


@pytest.mark.parametrize("case", ["empty", "not-dicom", "one-slice", "undecodable", "ambiguous"])
def test_bad_dicom_input_is_one_line_and_writes_nothing(tmp_path: Path, case: str) -> None:
    source = tmp_path / "in"
    source.mkdir()
    affine = lps_affine(np.eye(3))
    # one slice is a volume one slice thick (SliceThickness deep): read, then refused for its content
    expected = {"empty": "no DICOM files in this input folder", "not-dicom": "no DICOM files in this input folder",
                "one-slice": "no lungs found",
                "undecodable": "pixel data cannot be decoded", "ambiguous": "2 CT series found, choose one with --series UID"}
    if case == "not-dicom":
        (source / "notes.txt").write_text("a report, not an image")
        (source / "IM0001").write_bytes(b"\0" * 300)
    elif case == "one-slice":
        write_dicom(phantom(shape=(7, 5, 1)), affine, source)
    elif case == "undecodable":
        for path in write_dicom(phantom(), affine, source, syntax=RLELossless):
            ds = pydicom.dcmread(path)
            ds.PixelData = ds.PixelData[: len(ds.PixelData) // 3]  # cut short
            ds.save_as(path, enforce_file_format=True)
    elif case == "ambiguous":
        write_dicom(phantom(), affine, source / "a", description="LUNG", number=2)
        write_dicom(phantom(), affine, source / "b", description="SOFT TISSUE", number=3)
    before = digest(source)
    result = _predict(source, tmp_path / "out")
    assert_user_error(result, expected[case])
    assert no_output(tmp_path / "out") and digest(source) == before
    assert "Doe" not in result.output and "19500101" not in result.output and "PAT-0042" not in result.output


# ---------------------------------------------------------------- a folder tree as a cohort


def cohort_tree(root: Path) -> dict[str, str]:
    """Three studies, as PACS exports lay them out; returns their series UIDs by role.

    s1: an axial series, its coronal reformat and a one-image scout, one folder each.
    s2: two axial reconstructions (lung and soft-tissue kernels) in one flat folder: ambiguous.
    s3: one feet-first axial series."""
    uids = {role: generate_uid() for role in ("axial", "coronal", "scout", "lung", "soft", "feet")}
    write_dicom(phantom(seed=1), lps_affine(np.eye(3)), root / "Doe^Jane" / "study1" / "ax", series_uid=uids["axial"],
                study_uid="1.1", number=2)
    write_dicom(phantom(seed=2), lps_affine(ORIENTATIONS["coronal"]), root / "Doe^Jane" / "study1" / "cor",
                series_uid=uids["coronal"], study_uid="1.1", number=5, description="COR MPR")
    write_dicom(phantom(shape=(7, 5, 1), seed=3), lps_affine(ORIENTATIONS["sagittal"]), root / "Doe^Jane" / "study1" / "scout",
                series_uid=uids["scout"], study_uid="1.1", number=1)
    write_dicom(phantom(seed=4), lps_affine(np.eye(3)), root / "patient2", series_uid=uids["lung"], study_uid="2.2",
                number=3, description="LUNG B70f")
    flat = root / "patient2"
    for path in write_dicom(phantom(seed=5), lps_affine(np.eye(3)), root / "tmp", series_uid=uids["soft"],
                            study_uid="2.2", number=4, description="SOFT B30f", seed=1):
        path.rename(flat / f"X{path.name}")
    (root / "tmp").rmdir()
    write_dicom(phantom(seed=6), lps_affine(ORIENTATIONS["feet-first"]), root / "patient3" / "a" / "b",
                series_uid=uids["feet"], study_uid="3.3", number=2)
    return uids


def test_a_folder_tree_is_a_cohort_of_one_case_per_study(tmp_path: Path) -> None:
    import csv
    import hashlib
    import pickle

    from slice2d.dicom import find_cases, load_image, write_cases_table
    from slice2d.io import InputError, case_name, output_name

    uids = cohort_tree(tmp_path / "tree")
    cases = find_cases(tmp_path / "tree")
    names = [case_name(c) for c in cases]
    short = {role: hashlib.sha1(uid.encode()).hexdigest()[:8] for role, uid in uids.items()}
    # study 1: its axial series (the reformat and the scout are left out); study 2: ambiguous
    assert names == [f"s2-{short['axial']}", f"study-{hashlib.sha1(b'2.2').hexdigest()[:8]}", f"s2-{short['feet']}"]
    assert [output_name(c) for c in cases][0] == f"s2-{short['axial']}.nii.gz"
    assert cases == find_cases(tmp_path / "tree")  # the same order on every run
    read = load_image(cases[0])
    direct = load_series(tmp_path / "tree" / "Doe^Jane" / "study1" / "ax")
    np.testing.assert_array_equal(np.asanyarray(read.dataobj), np.asanyarray(direct.dataobj))
    np.testing.assert_array_equal(read.affine, direct.affine)
    np.testing.assert_array_equal(on_grid_of(load_image(cases[2]), lps_affine(ORIENTATIONS["feet-first"]))[0], phantom(seed=6))
    with pytest.raises(InputError) as err:
        load_image(cases[1])
    message = str(err.value)
    assert "2 CT series found, choose one with --series UID" in message
    assert f"{uids['lung']} 'LUNG B70f' (6 axial slices)" in message and f"{uids['soft']} 'SOFT B30f'" in message
    assert pickle.loads(pickle.dumps(cases[2])).series == cases[2].series  # a worker process gets the same case

    # --series: one of study 2's series, or both (two cases from one folder)
    chosen = find_cases(tmp_path / "tree", [uids["soft"]])
    assert [case_name(c) for c in chosen] == [names[0], f"s4-{short['soft']}", names[2]]
    np.testing.assert_array_equal(on_grid_of(load_image(chosen[1]), lps_affine(np.eye(3)))[0], phantom(seed=5))
    both = find_cases(tmp_path / "tree", [uids["soft"], uids["lung"]])
    assert len(both) == 4 and len(set(both)) == 4 and Path(both[1]) == Path(both[2]) and both[1] != both[2]
    with pytest.raises(InputError, match="no CT series with UID 9.9.9"):
        find_cases(tmp_path / "tree", ["9.9.9"])

    write_cases_table(cases, tmp_path / "cases.csv")
    with open(tmp_path / "cases.csv") as f:
        rows = {row["series_uid"]: row for row in csv.DictReader(f)}
    assert set(rows) == {uids[r] for r in ("axial", "coronal", "lung", "soft", "feet")}  # the scout is no CT series
    assert rows[uids["axial"]]["case"] == names[0] and rows[uids["axial"]]["status"] == "taken"
    assert rows[uids["coronal"]]["status"] == "left out" and rows[uids["coronal"]]["plane"] == "coronal"
    assert rows[uids["lung"]]["case"] == names[1] and rows[uids["soft"]]["status"].startswith("ambiguous")
    assert rows[uids["feet"]]["folder"] == str(tmp_path / "tree" / "patient3" / "a" / "b")
    assert rows[uids["axial"]]["study_uid"] == "1.1" and rows[uids["axial"]]["slices"] == "6"
    assert "Doe" not in "".join(names) and "19500101" not in (tmp_path / "cases.csv").read_text()


@pytest.mark.slow
def test_predict_on_a_series_and_on_its_nifti_gives_the_same_maps(tmp_path: Path) -> None:
    """One chest phantom, as a NIfTI file (LPS-stored) and as a feet-first DICOM series in a
    cohort tree beside an ambiguous study: the maps agree voxel for voxel in world space; the
    ambiguous study is recorded as failed and the other case written."""
    import csv

    from nibabel.orientations import axcodes2ornt

    from slice2d.synth import make_phantom

    ph = make_phantom(shape=(64, 64, 24), spacing=(5.0, 5.0, 10.0), seed=2)
    volume = np.clip(np.rint(ph.image), -1024, 3071).astype(np.int16)
    (tmp_path / "nifti").mkdir()
    nib.save(nib.Nifti1Image(volume, ph.affine), tmp_path / "nifti" / "chest.nii.gz")
    feet_first = ornt_transform(io_orientation(ph.affine), axcodes2ornt(("R", "P", "I")))
    stored = apply_orientation(volume, feet_first)
    write_dicom(stored, ph.affine @ inv_ornt_aff(feet_first, volume.shape), tmp_path / "tree" / "chest",
                study_uid="1.1", number=7)
    write_dicom(phantom(), lps_affine(np.eye(3)), tmp_path / "tree" / "other" / "a", study_uid="2.2")
    write_dicom(phantom(), lps_affine(np.eye(3)), tmp_path / "tree" / "other" / "b", study_uid="2.2")

    result = _predict(tmp_path / "tree", tmp_path / "out")
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert result.stderr.strip().splitlines()[-1].startswith("error: 1 of 2 cases failed")
    with open(tmp_path / "out" / "cases.csv") as f:
        case = next(row["case"] for row in csv.DictReader(f) if row["study_uid"] == "1.1")
    with open(tmp_path / "out" / "severity" / "failures.csv") as f:
        (failure,) = list(csv.DictReader(f))
    assert failure["case"].startswith("study-") and "choose one with --series UID" in failure["error"]
    assert _predict(tmp_path / "nifti", tmp_path / "out-nifti").exit_code == 0
    for sub in ("", "lungs"):
        from_series = nib.load(tmp_path / "out" / sub / f"{case}.nii.gz")
        from_nifti = nib.load(tmp_path / "out-nifti" / sub / "chest.nii.gz")
        assert from_series.shape == stored.shape  # the series' own grid
        data, affine = on_grid_of(from_series, ph.affine)
        np.testing.assert_allclose(affine, ph.affine, atol=1e-6)
        np.testing.assert_array_equal(data, np.asanyarray(from_nifti.dataobj))
        assert np.count_nonzero(data) > 100  # maps with something in them


# ---------------------------------------------------------------- prepare and severity


def test_prepare_takes_a_dicom_case_folder(tmp_path: Path) -> None:
    """images/<case>/ holding a series pairs with labels/<case>.nii.gz, also when the label map
    was drawn on a dcm2niix conversion (rows the other way): stored exactly like the NIfTI case."""
    import h5py
    from conftest import blob_labels

    volume, affine = phantom(shape=(24, 26, 8), seed=3), lps_affine(np.eye(3))
    labels = blob_labels(volume.shape, np.random.default_rng(0))
    for kind in ("nifti", "dicom"):
        (tmp_path / kind / "labels").mkdir(parents=True)
        (tmp_path / kind / "images").mkdir()
    nib.save(nib.Nifti1Image(volume, affine), tmp_path / "nifti" / "images" / "chest.nii.gz")
    nib.save(nib.Nifti1Image(labels, affine), tmp_path / "nifti" / "labels" / "chest.nii.gz")
    write_dicom(volume, affine, tmp_path / "dicom" / "images" / "chest")
    flip_rows = np.array([[1, 0, 0, 0], [0, -1, 0, volume.shape[1] - 1], [0, 0, 1, 0], [0, 0, 0, 1]])
    nib.save(nib.Nifti1Image(labels[:, ::-1], affine @ flip_rows), tmp_path / "dicom" / "labels" / "chest.nii.gz")
    stored = {}
    for kind in ("nifti", "dicom"):
        result = invoke("prepare", "--images", tmp_path / kind / "images", "--labels", tmp_path / kind / "labels",
                        "--out", tmp_path / f"{kind}.h5", "--config", "demo", "-q")
        assert result.exit_code == 0, result.output
        with h5py.File(tmp_path / f"{kind}.h5") as h5:
            stored[kind] = {name: h5["cases/chest"][name][()] for name in ("image", "label", "z")}
    assert stored["nifti"]["label"].any()
    for name in ("image", "label", "z"):
        np.testing.assert_array_equal(stored["dicom"][name], stored["nifti"][name])


def test_severity_takes_a_dicom_series_as_image(tmp_path: Path) -> None:
    """--image as a series folder (one case) or a folder of series folders (a cohort): the same
    report as from the NIfTI of the same scan."""
    import json

    from slice2d.synth import make_phantom

    ph = make_phantom(shape=(48, 48, 16), spacing=(7.0, 7.0, 15.0), seed=1, lesion_free=False)
    volume = np.clip(np.rint(ph.image), -1024, 3071).astype(np.int16)
    nib.save(nib.Nifti1Image(volume, ph.affine), tmp_path / "chest.nii.gz")
    (tmp_path / "lesions").mkdir()
    nib.save(nib.Nifti1Image(ph.lesions, ph.affine), tmp_path / "lesions" / "chest.nii.gz")
    write_dicom(volume, ph.affine, tmp_path / "cts" / "chest")
    write_dicom(phantom(shape=(48, 48, 3)), ph.affine, tmp_path / "two-series", description="OTHER")
    write_dicom(volume, ph.affine, tmp_path / "two-series", seed=1)
    series_uid = next(pydicom.dcmread(p).SeriesInstanceUID for p in (tmp_path / "two-series").iterdir()
                      if pydicom.dcmread(p).SeriesDescription == "PHANTOM")
    runs = {"nifti": ("--image", tmp_path / "chest.nii.gz"), "series": ("--image", tmp_path / "cts" / "chest"),
            "chosen": ("--image", tmp_path / "two-series", "--series", series_uid)}
    reports = {}
    for kind, image in runs.items():
        result = invoke("severity", "--lesions", tmp_path / "lesions" / "chest.nii.gz", *image, "--out",
                        tmp_path / kind / "r.json", "-q")
        assert result.exit_code == 0, result.output
        reports[kind] = json.loads((tmp_path / kind / "r.json").read_text())
    result = invoke("severity", "--lesions", tmp_path / "lesions", "--image", tmp_path / "cts", "--out", tmp_path / "cohort", "-q")
    assert result.exit_code == 0, result.output
    reports["cohort"] = json.loads((tmp_path / "cohort" / "chest.json").read_text())
    assert reports["nifti"]["total_pi"] > 0
    for kind in ("series", "chosen", "cohort"):
        assert reports[kind]["total_pi"] == reports["nifti"]["total_pi"] and reports[kind]["tss"] == reports["nifti"]["tss"]
        assert reports[kind]["regions"] == reports["nifti"]["regions"]
