"""DICOM series reading: discovery, slice order, HU conversion and the voxel -> world matrix.

Synthetic series (written with pydicom in a tmp folder) check each rule with a known answer; the
real series in ../shared/data/dicom check the same rules on scanner output, against nibabel's own
DICOM wrapper (an independent reading of the same headers) and against affines derived by hand.
"""

from __future__ import annotations

import random
import shutil
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from conftest import SHARED
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.pixels.decoders.base import get_decoder
from pydicom.sequence import Sequence
from pydicom.uid import (
    CTImageStorage,
    EnhancedCTImageStorage,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    LegacyConvertedEnhancedCTImageStorage,
    MRImageStorage,
    RLELossless,
    SecondaryCaptureImageStorage,
    generate_uid,
)

from slice2d import dicom
from slice2d.dicom import find_series, is_dicom_series, load_series
from slice2d.io import InputError

DICOM_DATA = SHARED / "dicom"
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])
AXIAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)


def oblique_orientation(z_deg: float = 20.0, x_deg: float = 12.0) -> tuple[float, ...]:
    z, x = np.radians(z_deg), np.radians(x_deg)
    rz = np.array([[np.cos(z), -np.sin(z), 0], [np.sin(z), np.cos(z), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(x), -np.sin(x)], [0, np.sin(x), np.cos(x)]])
    rot = rz @ rx
    return tuple(rot[:, 0]) + tuple(rot[:, 1])


def stored_pattern(k: int, rows: int, cols: int) -> np.ndarray:
    """Stored values that encode slice, row and column: 100 k + 10 row + column (rows, cols < 10)."""
    r, c = np.mgrid[:rows, :cols]
    return (100 * k + 10 * r + c).astype(np.int16)


def ct_slice(position, orientation=AXIAL, rows: int = 4, cols: int = 6, spacing=(0.7, 0.9), pixels=None,
             series_uid: str = "1.2.3.4", description: str = "CHEST", sop_class: str = CTImageStorage,
             modality: str = "CT", image_type=("ORIGINAL", "PRIMARY", "AXIAL"), slope: float = 1.0,
             intercept: float = -1024.0, **extra) -> Dataset:
    """A minimal single-frame CT image with signed 16-bit pixels (and a fake patient, never to be shown)."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, ds.file_meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.ImageType = modality, list(image_type)
    ds.PatientName, ds.PatientBirthDate = "Doe^Jane", "19500101"
    ds.SeriesInstanceUID, ds.SeriesDescription = series_uid, description
    ds.ImagePositionPatient = [float(v) for v in position]
    ds.ImageOrientationPatient = [float(v) for v in orientation]
    ds.PixelSpacing = list(spacing)
    ds.Rows, ds.Columns = rows, cols
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
    for key, value in extra.items():
        setattr(ds, key, value)
    ds.PixelData = (np.zeros((rows, cols), np.int16) if pixels is None else pixels).astype(np.int16).tobytes()
    return ds


def write_series(folder: Path, positions, shuffle_names: bool = True, prefix: str = "im", **kwargs) -> list[Path]:
    """One file per slice, named in a shuffled order (names never carry the geometry)."""
    folder.mkdir(parents=True, exist_ok=True)
    order = list(range(len(positions)))
    if shuffle_names:
        random.Random(0).shuffle(order)
    paths, pixels = [], kwargs.pop("pixels", None)
    for k, pos in enumerate(positions):
        rows, cols = kwargs.get("rows", 4), kwargs.get("cols", 6)
        ds = ct_slice(pos, pixels=stored_pattern(k, rows, cols) if pixels is None else pixels, **kwargs)
        ds.InstanceNumber = len(positions) - k  # reversed: InstanceNumber is not geometry either
        paths.append(folder / f"{prefix}{order[k]:03d}.dcm")
        ds.save_as(paths[-1], enforce_file_format=True)
    return paths


def positions_along(orientation, n: int, distance: float, origin=(-100.0, 50.0, -300.0)) -> list[np.ndarray]:
    normal = np.cross(orientation[:3], orientation[3:])
    return [np.array(origin) + k * distance * normal for k in range(n)]


def expected_world(ds: Dataset, i: float, j: float) -> np.ndarray:
    """RAS mm of column i, row j of a slice, straight from DICOM's definition (PS 3.3 C.7.6.2.1.1)."""
    iop = np.array([float(v) for v in ds.ImageOrientationPatient])
    row_spacing, col_spacing = (float(v) for v in ds.PixelSpacing)
    lps = np.array([float(v) for v in ds.ImagePositionPatient]) + i * col_spacing * iop[:3] + j * row_spacing * iop[3:]
    return LPS_TO_RAS @ lps


# ---------------------------------------------------------------- synthetic series


@pytest.mark.parametrize("orientation", [AXIAL, oblique_orientation()], ids=["axial", "oblique"])
def test_synthetic_series_geometry_and_layout(tmp_path: Path, orientation) -> None:
    n, rows, cols = 5, 4, 6
    write_series(tmp_path / "scan" / "a", positions_along(orientation, n, 2.5), orientation=orientation)
    # to skip: a localizer in the series, a scout series, a dose screen, an MR image, a text file
    ct_slice((0, 0, 0), image_type=("ORIGINAL", "PRIMARY", "LOCALIZER")).save_as(
        tmp_path / "scan" / "scout-in-series.dcm", enforce_file_format=True)
    ct_slice((0, 0, 0), orientation=(0, 1, 0, 0, 0, -1), series_uid="9.9.9").save_as(
        tmp_path / "scan" / "scout.dcm", enforce_file_format=True)
    ct_slice((0, 0, 0), sop_class=MRImageStorage, modality="MR", series_uid="8.8.8").save_as(
        tmp_path / "scan" / "mr.dcm", enforce_file_format=True)
    for k in range(5):  # a dose report saved as screenshots (CT modality, secondary capture class)
        ct_slice((0, 0, k), sop_class=SecondaryCaptureImageStorage, series_uid="7.7.7").save_as(
            tmp_path / "scan" / f"dose{k}.dcm", enforce_file_format=True)
    (tmp_path / "scan" / "notes.txt").write_text("not DICOM")

    img = load_series(tmp_path / "scan")
    data = np.asanyarray(img.dataobj)
    assert img.shape == (cols, rows, n) and data.dtype == np.int16
    # voxel (i, j, k) holds column i, row j of the k-th slice along the normal, rescaled to HU
    i, j, k = np.meshgrid(np.arange(cols), np.arange(rows), np.arange(n), indexing="ij")
    np.testing.assert_array_equal(data, 100 * k + 10 * j + i - 1024)
    # world positions: every corner of every slice, as DICOM defines them
    for kk, pos in enumerate(positions_along(orientation, n, 2.5)):
        ds = ct_slice(pos, orientation=orientation)
        for ii, jj in [(0, 0), (cols - 1, 0), (0, rows - 1), (cols - 1, rows - 1)]:
            np.testing.assert_allclose(nib.affines.apply_affine(img.affine, [ii, jj, kk]), expected_world(ds, ii, jj), atol=1e-6)
    np.testing.assert_allclose(nib.affines.voxel_sizes(img.affine), [0.9, 0.7, 2.5], atol=1e-9)
    assert img.header.get_qform(coded=True)[1] == 1 and img.header.get_sform(coded=True)[1] == 1


def test_single_slice_takes_slice_thickness(tmp_path: Path) -> None:
    write_series(tmp_path, [(10.0, 20.0, 30.0)], SliceThickness=5.0)
    img = load_series(tmp_path)
    assert img.shape == (6, 4, 1)
    np.testing.assert_allclose(img.affine[:3], [[-0.9, 0, 0, -10.0], [0, -0.7, 0, -20.0], [0, 0, 5.0, 30.0]])


def test_series_are_told_apart_and_chosen_by_uid(tmp_path: Path) -> None:
    write_series(tmp_path / "a", positions_along(AXIAL, 4, 2.0), series_uid="1.1", description="LUNG")
    write_series(tmp_path / "b", positions_along(AXIAL, 6, 1.0), series_uid="2.2", description="SOFT")
    with pytest.raises(InputError) as err:
        load_series(tmp_path)
    message = str(err.value)
    assert "--series" in message and "1.1 'LUNG' (4 axial slices)" in message and "2.2 'SOFT' (6 axial slices)" in message
    assert "Doe" not in message and "1950" not in message  # no patient identifiers
    assert load_series(tmp_path, series_uid="1.1").shape[2] == 4
    assert [s.uid for s in find_series(tmp_path)] == ["2.2", "1.1"]
    with pytest.raises(InputError, match="no CT series with UID 3.3"):
        load_series(tmp_path, series_uid="3.3")


@pytest.mark.parametrize("z, expected", [
    ([0, 2, 4, 8, 10], r"1 missing slices .*4.00 mm where the other slices are 2.00 mm apart"),
    ([0, 2, 4, 5.5, 7.5], r"uneven slice spacing \(1.50-2.00 mm"),
    ([0, 2, 2, 4], r"share a position"),
])
def test_irregular_slice_positions_are_refused(tmp_path: Path, z, expected) -> None:
    write_series(tmp_path, [(0.0, 0.0, v) for v in z])
    with pytest.raises(InputError, match=expected):
        load_series(tmp_path)


def test_gantry_tilt_is_refused(tmp_path: Path) -> None:
    """Slices that step along z while the image plane is tilted: positions leave the normal."""
    tilted = oblique_orientation(0, 15)
    write_series(tmp_path / "positions", [(0.0, 0.0, 2.0 * k) for k in range(5)], orientation=tilted)
    with pytest.raises(InputError, match=r"gantry tilt 15.0 degrees"):
        load_series(tmp_path / "positions")
    write_series(tmp_path / "tag", [(0.0, 0.0, 2.0 * k) for k in range(5)], GantryDetectorTilt=7.0)
    with pytest.raises(InputError, match=r"gantry tilt 7.0 degrees"):
        load_series(tmp_path / "tag")


def test_mixed_sizes_and_orientations_are_refused(tmp_path: Path) -> None:
    write_series(tmp_path / "sizes", [(0.0, 0.0, 2.0 * k) for k in range(4)])
    ct_slice((0, 0, 8.0), rows=5).save_as(tmp_path / "sizes" / "odd.dcm", enforce_file_format=True)
    with pytest.raises(InputError, match=r"mixed image sizes .*4x6 at 0.7x0.9 mm, 5x6"):
        load_series(tmp_path / "sizes")
    write_series(tmp_path / "orient", [(0.0, 0.0, 2.0 * k) for k in range(4)])
    ct_slice((0, 0, 8.0), orientation=oblique_orientation()).save_as(tmp_path / "orient" / "odd.dcm", enforce_file_format=True)
    with pytest.raises(InputError, match="mixed slice orientations"):
        load_series(tmp_path / "orient")


def test_no_ct_series(tmp_path: Path) -> None:
    ct_slice((0, 0, 0), sop_class=MRImageStorage, modality="MR").save_as(tmp_path / "mr.dcm", enforce_file_format=True)
    (tmp_path / "readme.txt").write_text("hello")
    with pytest.raises(InputError, match=r"no CT image series found \(1 MR non-CT-image object, 1 not DICOM\)"):
        load_series(tmp_path)
    assert is_dicom_series(tmp_path) and not is_dicom_series(tmp_path / "mr.dcm")
    (tmp_path / "mr.dcm").unlink()
    assert not is_dicom_series(tmp_path)


def test_padding_and_outside_fov_become_air(tmp_path: Path) -> None:
    """LIDC's case: PixelPaddingValue written as US 63536 on signed pixels means -2000 stored.

    The intercept (+1024) puts that padding at -976 HU, above the air floor, so only reading the
    padding value as signed makes it air."""
    pixels = np.array([[-2000, -3072, -2100, -1024, -1000, 1000]] * 4, np.int16)  # stored values
    paths = write_series(tmp_path, [(0.0, 0.0, 2.0 * k) for k in range(3)], pixels=pixels, intercept=1024.0)
    for path in paths:
        ds = pydicom.dcmread(path)
        ds.add_new(0x00280120, "US", 63536)
        ds.save_as(path, enforce_file_format=True)
    data = np.asanyarray(load_series(tmp_path).dataobj)
    np.testing.assert_array_equal(data[:, 0, 0], [-1024, -1024, -1024, 0, 24, 2024])


def test_non_integral_rescale_gives_float(tmp_path: Path) -> None:
    write_series(tmp_path, [(0.0, 0.0, 2.0 * k) for k in range(3)], slope=0.5, intercept=-1000.0)
    data = np.asanyarray(load_series(tmp_path).dataobj)
    assert data.dtype == np.float32
    np.testing.assert_allclose(data[:, :, 1], (100 + 10 * np.arange(4)[None, :] + np.arange(6)[:, None]) * 0.5 - 1000)


def test_enhanced_ct_multiframe_reads_like_single_frames(tmp_path: Path) -> None:
    orientation, n, rows, cols = oblique_orientation(), 4, 4, 6
    positions = positions_along(orientation, n, 1.5)
    write_series(tmp_path / "single", positions, orientation=orientation)
    ds = ct_slice(positions[0], orientation=orientation, sop_class=EnhancedCTImageStorage)
    for name in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "RescaleSlope", "RescaleIntercept"):
        delattr(ds, name)
    shared = Dataset()
    shared.PlaneOrientationSequence = Sequence([Dataset()])
    shared.PlaneOrientationSequence[0].ImageOrientationPatient = list(orientation)
    shared.PixelMeasuresSequence = Sequence([Dataset()])
    shared.PixelMeasuresSequence[0].PixelSpacing = [0.7, 0.9]
    shared.PixelValueTransformationSequence = Sequence([Dataset()])
    shared.PixelValueTransformationSequence[0].RescaleSlope = 1.0
    shared.PixelValueTransformationSequence[0].RescaleIntercept = -1024.0
    ds.SharedFunctionalGroupsSequence = Sequence([shared])
    order = [2, 0, 3, 1]  # frames stored out of order
    frames = []
    for k in order:
        frame = Dataset()
        frame.PlanePositionSequence = Sequence([Dataset()])
        frame.PlanePositionSequence[0].ImagePositionPatient = [float(v) for v in positions[k]]
        frames.append(frame)
    ds.PerFrameFunctionalGroupsSequence = Sequence(frames)
    ds.NumberOfFrames = n
    ds.PixelData = np.stack([stored_pattern(k, rows, cols) for k in order]).tobytes()
    (tmp_path / "multi").mkdir()
    ds.save_as(tmp_path / "multi" / "enhanced.dcm", enforce_file_format=True)
    single, multi = load_series(tmp_path / "single"), load_series(tmp_path / "multi")
    np.testing.assert_array_equal(np.asanyarray(multi.dataobj), np.asanyarray(single.dataobj))
    np.testing.assert_allclose(multi.affine, single.affine, atol=1e-9)


@pytest.mark.parametrize("sop_class", [EnhancedCTImageStorage, LegacyConvertedEnhancedCTImageStorage],
                         ids=["enhanced", "legacy-converted"])
def test_multiframe_per_frame_rescale_and_a_single_frame(tmp_path: Path, sop_class: str) -> None:
    """Each frame's own PixelValueTransformation and PixelMeasures win over the shared ones; a
    file of one frame (pixel_array 2D) reads as one slice."""
    rows, cols, spacing = 4, 6, (0.6, 0.8)
    positions = positions_along(AXIAL, 3, 2.0)
    for n in (3, 1):
        ds = ct_slice(positions[0], sop_class=sop_class)
        for name in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "RescaleSlope", "RescaleIntercept"):
            delattr(ds, name)
        shared = Dataset()
        shared.PlaneOrientationSequence = Sequence([Dataset()])
        shared.PlaneOrientationSequence[0].ImageOrientationPatient = list(AXIAL)
        shared.PixelMeasuresSequence = Sequence([Dataset()])
        shared.PixelMeasuresSequence[0].PixelSpacing = [9.0, 9.0]  # overridden per frame
        ds.SharedFunctionalGroupsSequence = Sequence([shared])
        frames = []
        for k in range(n):
            frame = Dataset()
            frame.PlanePositionSequence = Sequence([Dataset()])
            frame.PlanePositionSequence[0].ImagePositionPatient = [float(v) for v in positions[k]]
            frame.PixelMeasuresSequence = Sequence([Dataset()])
            frame.PixelMeasuresSequence[0].PixelSpacing = list(spacing)
            frame.PixelValueTransformationSequence = Sequence([Dataset()])
            frame.PixelValueTransformationSequence[0].RescaleSlope = 1.0
            frame.PixelValueTransformationSequence[0].RescaleIntercept = -1000.0 - 10 * k
            frames.append(frame)
        ds.PerFrameFunctionalGroupsSequence = Sequence(frames)
        ds.NumberOfFrames = n
        ds.PixelData = np.stack([stored_pattern(k, rows, cols) for k in range(n)]).tobytes()
        (tmp_path / str(n)).mkdir()
        ds.save_as(tmp_path / str(n) / "multi.dcm", enforce_file_format=True)
        img = load_series(tmp_path / str(n))
        data = np.asanyarray(img.dataobj)
        i, j, k = np.meshgrid(np.arange(cols), np.arange(rows), np.arange(n), indexing="ij")
        np.testing.assert_array_equal(data, 100 * k + 10 * j + i - 1000 - 10 * k)
        np.testing.assert_allclose(nib.affines.voxel_sizes(img.affine)[:2], [0.8, 0.6])


def test_the_axial_series_of_a_study_is_taken_beside_a_reformat(tmp_path: Path) -> None:
    """A coronal reformat of the same study does not make the folder ambiguous."""
    write_series(tmp_path / "ax", positions_along(AXIAL, 5, 2.0), series_uid="1.1")
    coronal = (1.0, 0.0, 0.0, 0.0, 0.0, -1.0)
    write_series(tmp_path / "cor", positions_along(coronal, 6, 2.0), orientation=coronal, series_uid="2.2")
    assert {s.uid: s.plane for s in find_series(tmp_path)} == {"2.2": "coronal", "1.1": "axial"}
    assert load_series(tmp_path).shape == (6, 4, 5)
    assert load_series(tmp_path, series_uid="2.2").shape == (6, 4, 6)


def test_missing_decoder_names_the_package(tmp_path: Path, monkeypatch) -> None:
    for path in write_series(tmp_path, [(0.0, 0.0, 2.0 * k) for k in range(3)]):
        ds = pydicom.dcmread(path)
        ds.compress(RLELossless)
        ds.save_as(path, enforce_file_format=True)
    assert np.asanyarray(load_series(tmp_path).dataobj)[2, 1, 2] == 100 * 2 + 10 + 2 - 1024

    class Unavailable:
        is_available = False

    monkeypatch.setattr(dicom, "get_decoder", lambda uid: Unavailable())
    with pytest.raises(InputError, match=r"RLE Lossless and no installed decoder .* pip install pylibjpeg pylibjpeg-rle"):
        load_series(tmp_path)


# ---------------------------------------------------------------- real series

REAL = {"lidc-idri-0001": 133, "cptac-c3n-00247": 99, "ricord-1a-000082": 255}
_loaded: dict[str, nib.Nifti1Image] = {}


def real_folder(name: str) -> Path:
    folder = DICOM_DATA / name
    if not folder.is_dir():
        pytest.skip(f"real DICOM series not found at {folder} (../shared/data is absent outside the dev setup)")
    return folder


def load_real(name: str) -> nib.Nifti1Image:
    if name not in _loaded:  # read each real series once per test run (RICORD takes seconds)
        _loaded[name] = load_series(real_folder(name))
    return _loaded[name]


def nibabel_wrapper(ds: Dataset):
    """nibabel's own reading of a slice header: an independent voxel (row, column) -> LPS affine."""
    with warnings.catch_warnings():  # nibabel.nicom warns at import that its readers are experimental
        warnings.simplefilter("ignore", UserWarning)
        from nibabel.nicom.dicomwrappers import wrapper_from_data
    return wrapper_from_data(ds)


def along_normal(ds: Dataset) -> float:
    """ImagePositionPatient . (row cosine x column cosine): the slice's place along the normal."""
    iop = np.array([float(v) for v in ds.ImageOrientationPatient])
    return float(np.dot([float(v) for v in ds.ImagePositionPatient], np.cross(iop[:3], iop[3:])))


def sorted_headers(folder: Path) -> list[Dataset]:
    """The slices' headers in order along the normal."""
    headers = [pydicom.dcmread(p, stop_before_pixels=True) for p in folder.glob("*.dcm")]
    return sorted(headers, key=along_normal)


@pytest.mark.parametrize("name", REAL)
def test_real_series_geometry(name: str) -> None:
    folder = real_folder(name)
    img, headers = load_real(name), sorted_headers(folder)
    rows, cols = int(headers[0].Rows), int(headers[0].Columns)
    assert img.shape == (cols, rows, REAL[name]) and len(headers) == REAL[name]
    # voxel (0, 0, k) and the slice's far corner are where each sorted slice's header puts them
    for k, ds in enumerate(headers):
        for i, j in [(0, 0), (cols - 1, rows - 1)]:
            np.testing.assert_allclose(nib.affines.apply_affine(img.affine, [i, j, k]), expected_world(ds, i, j), atol=1e-3)
    # spacing: PixelSpacing (row, column) and the distance between sorted positions
    along = np.array([along_normal(ds) for ds in headers])
    assert np.all(np.diff(along) > 0)
    row_spacing, col_spacing = (float(v) for v in headers[0].PixelSpacing)
    np.testing.assert_allclose(nib.affines.voxel_sizes(img.affine), [col_spacing, row_spacing, np.diff(along).mean()], atol=1e-6)
    # nibabel's wrapper: voxel (row, column, slice) -> LPS, its normal column x row keeping a
    # rotation; ours is (column, row, slice) -> RAS with the normal row x column, equally a rotation
    reference = nibabel_wrapper(headers[0])
    swap = np.array([[0, 1, 0], [1, 0, 0], [0, 0, 1]])
    np.testing.assert_allclose(img.affine[:3, :2], (LPS_TO_RAS @ reference.affine[:3, :3] @ swap)[:, :2], atol=1e-6)
    np.testing.assert_allclose(img.affine[:3, 3], LPS_TO_RAS @ reference.affine[:3, 3], atol=1e-6)
    np.testing.assert_allclose(img.affine[:3, 2] / np.diff(along).mean(), -LPS_TO_RAS @ reference.slice_normal, atol=1e-6)
    assert np.linalg.det(img.affine[:3, :3]) > 0 and np.linalg.det(reference.rotation_matrix) > 0


@pytest.mark.parametrize("name, affine", [
    # by hand from the headers: IOP = identity, so RAS columns are (-col spacing, -row spacing, +slice
    # distance); origin = (-x, -y, z) of the lowest slice (LIDC is feet first: its first file is the top)
    ("lidc-idri-0001", [[-0.703125, 0, 0, 166.0], [0, -0.703125, 0, 171.699997], [0, 0, 2.5, -340.0]]),
    ("cptac-c3n-00247", [[-0.564453125, 0, 0, 143.2177734375], [0, -0.564453125, 0, 287.2177734375], [0, 0, 3.0, -288.0]]),
])
def test_real_affine_known_answer(name: str, affine) -> None:
    img = load_real(name)
    np.testing.assert_allclose(img.affine[:3], affine, atol=1e-5)
    assert nib.aff2axcodes(img.affine) == ("L", "P", "S")
    # dcm2niix's default layout flips the rows (LAS); the same voxel must land on the same point
    flip = np.array([[1, 0, 0, 0], [0, -1, 0, img.shape[1] - 1], [0, 0, 1, 0], [0, 0, 0, 1]])
    las = img.affine @ flip
    assert nib.aff2axcodes(las) == ("L", "A", "S")
    np.testing.assert_allclose(las @ [3, img.shape[1] - 1 - 7, 5, 1], img.affine @ [3, 7, 5, 1])


@pytest.mark.parametrize("name", REAL)
def test_real_series_hounsfield_units(name: str) -> None:
    data = np.asanyarray(load_real(name).dataobj)
    assert data.min() == -1024  # padding (-2000) and outside-FOV (-2048 HU) values floored to air
    assert 1500 < data.max() <= 3071
    assert -1024 <= np.percentile(data, 5) <= -950  # outside air
    lung_air = data[(data > -1000) & (data < -900)]
    assert lung_air.size > 0.02 * data.size  # lungs and air around the body are where air belongs
    soft = np.mean((data > -100) & (data < 100))
    assert 0.1 < soft < 0.6  # soft tissue is a large share of a chest CT


def test_shuffled_names_read_like_sorted_copy(tmp_path: Path) -> None:
    folder = real_folder("cptac-c3n-00247")
    for k, ds in enumerate(sorted_headers(folder)):
        (tmp_path / f"{k:03d}.dcm").symlink_to(ds.filename)
    shuffled, ordered = load_real("cptac-c3n-00247"), load_series(tmp_path)
    np.testing.assert_array_equal(np.asanyarray(shuffled.dataobj), np.asanyarray(ordered.dataobj))
    np.testing.assert_array_equal(shuffled.affine, ordered.affine)


def test_head_gantry_tilt_is_refused() -> None:
    with pytest.raises(InputError, match=r"gantry tilt 18.5 degrees.*uneven slice spacing \(1.08-7.00 mm") as err:
        load_series(real_folder("head-gantry-tilt"))
    assert "\n" not in str(err.value) and "resample" in str(err.value)


@pytest.mark.parametrize("syntax", [RLELossless, JPEG2000Lossless], ids=["rle", "jpeg2000"])
def test_transcoded_slices_read_like_the_originals(tmp_path: Path, syntax) -> None:
    if not get_decoder(syntax).is_available:
        pytest.skip(f"no decoder for {syntax.name} installed")
    folder = real_folder("lidc-idri-0001")
    (tmp_path / "plain").mkdir()
    (tmp_path / "coded").mkdir()
    for name in ("1-060.dcm", "1-061.dcm", "1-062.dcm"):
        shutil.copy(folder / name, tmp_path / "plain" / name)
        ds = pydicom.dcmread(folder / name)
        ds.compress(syntax, encoding_plugin="pylibjpeg" if syntax == JPEG2000Lossless else "")
        ds.save_as(tmp_path / "coded" / name, enforce_file_format=True)
        assert pydicom.dcmread(tmp_path / "coded" / name).file_meta.TransferSyntaxUID == syntax
    plain, coded = load_series(tmp_path / "plain"), load_series(tmp_path / "coded")
    np.testing.assert_array_equal(np.asanyarray(coded.dataobj), np.asanyarray(plain.dataobj))
    np.testing.assert_array_equal(coded.affine, plain.affine)


def test_lungmask_samples_without_modality() -> None:
    """Two slices with no Modality but a CT SOP class, -2048 HU outside the FOV."""
    folder = real_folder("../ct-samples")
    img = load_series(folder)
    data = np.asanyarray(img.dataobj)
    assert img.shape == (512, 512, 2) and data.min() == -1024
    np.testing.assert_allclose(img.affine[:3], [[-0.625, 0, 0, 0], [0, -0.625, 0, 0], [0, 0, 1, 0]])


@pytest.mark.slow
def test_predict_takes_a_dicom_series_folder(tmp_path: Path) -> None:
    """`slice2d predict` on a folder holding one DICOM CT series (a phantom written slice by slice,
    LPS like a scanner's): maps named after the folder, on the series' own grid."""
    from conftest import invoke

    from slice2d.synth import make_phantom

    ph = make_phantom(shape=(80, 80, 30), spacing=(4.0, 4.0, 8.0), seed=2)
    folder = tmp_path / "series-1"
    positions = [np.array([-160.0, -160.0, -120.0 + 8.0 * k]) for k in range(30)]
    stored = [np.rint(ph.image[:, :, k].T + 1024).astype(np.int16) for k in range(30)]  # LPS-stored: rows P, columns L
    folder.mkdir()
    for k, pos in enumerate(positions):
        ds = ct_slice(pos, rows=80, cols=80, spacing=(4.0, 4.0), pixels=stored[k])
        ds.save_as(folder / f"{(k * 7) % 30:03d}.dcm", enforce_file_format=True)  # names shuffled against z
    result = invoke("predict", folder, "--out", tmp_path / "out", "--model", "checkpoints/lesions-128", "-q")
    assert result.exit_code == 0, result.output
    series = load_series(folder)
    for sub in ("", "lungs"):
        out = nib.load(tmp_path / "out" / sub / "series-1.nii.gz")
        assert out.shape == series.shape == (80, 80, 30)
        np.testing.assert_allclose(out.affine, series.affine, atol=1e-6)
    lungs = np.asarray(nib.load(tmp_path / "out" / "lungs" / "series-1.nii.gz").dataobj)
    truth = ph.lungs  # stored (L, P, S) like the series
    dice = 2 * np.count_nonzero((lungs > 0) & (truth > 0)) / (np.count_nonzero(lungs) + np.count_nonzero(truth))
    assert dice > 0.9, dice
    assert np.mean(lungs[truth == 1] == 1) > 0.9 and np.mean(lungs[truth == 2] == 2) > 0.9  # right and left kept
