"""DICOM series in: discovery, decoding and geometry, giving a NIfTI volume in HU.

``load_series(folder)`` finds the CT series in a folder tree, sorts its slices by position along
the slice normal (file names and InstanceNumber are not geometry), converts stored values to
Hounsfield units and builds the voxel -> world matrix in NIfTI's RAS+ convention: every voxel
lands where its slice header puts it, as with dcm2niix (which also flips the rows, a different
array for the same world positions) and nibabel.nicom. Series that cannot be stacked into one regular grid (gantry tilt,
uneven or missing slices, mixed orientations or sizes) are refused with an ``InputError`` rather
than stacked into a silently distorted volume.

Array layout of the result: voxel (i, j, k) = (image column, image row, sorted slice), so the
affine's columns are the DICOM row cosine x column spacing, the column cosine x row spacing and
the slice normal x slice distance. Messages name series by UID, description and slice count only:
no patient identifiers.

A folder tree of several studies is a cohort (``find_cases``): per study, its one axial CT series
(or the series chosen with ``--series``) is a case, named from its SeriesNumber and a hash of its
SeriesInstanceUID (``case_label``), never from patient attributes; ``write_cases_table`` maps each
case back to its folder, study and series.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import logging
from collections import Counter, defaultdict
from collections.abc import Collection, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.misc import is_dicom
from pydicom.pixels.decoders.base import get_decoder

from slice2d.io import NIFTI_SUFFIXES, InputError, case_name, is_volume, list_niftis, load_volume, write_text

logger = logging.getLogger(__name__)

CT_STORAGE = {"1.2.840.10008.5.1.4.1.1.2",  # CT Image Storage
              "1.2.840.10008.5.1.4.1.1.2.1",  # Enhanced CT Image Storage (multi-frame)
              "1.2.840.10008.5.1.4.1.1.2.2"}  # Legacy Converted Enhanced CT Image Storage
NOT_SLICES = {"LOCALIZER", "SCREEN SAVE", "DOSE_INFO", "DOSE INFO"}  # ImageType values of non-volume images
LOCALIZER_MAX_SLICES = 3  # a separate series this small, in another plane, is a scout, not the scan
AIR_HU = -1024  # lowest HU scanners store; below it lie only padding / outside-FOV codes (-2000, -2048, -3024)
MAX_POSITION_ERROR_MM = 0.1  # largest distance of a slice from the regular grid the affine implies
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
DECODER_PACKAGES = {  # transfer syntax UID prefix -> what to install to decode it offline
    "1.2.840.10008.1.2.4.5": "pylibjpeg pylibjpeg-libjpeg", "1.2.840.10008.1.2.4.7": "pylibjpeg pylibjpeg-libjpeg",
    "1.2.840.10008.1.2.4.8": "pylibjpeg pylibjpeg-libjpeg", "1.2.840.10008.1.2.4.9": "pylibjpeg pylibjpeg-openjpeg",
    "1.2.840.10008.1.2.4.20": "pylibjpeg pylibjpeg-openjpeg", "1.2.840.10008.1.2.5": "pylibjpeg pylibjpeg-rle",
}


@dataclass(frozen=True)
class SeriesInfo:
    """One image series found in a folder: what a user needs to pick it with ``--series``."""

    uid: str
    description: str
    modality: str
    n_slices: int
    plane: str  # "axial", "coronal", "sagittal" (the axis the slice normal is closest to)
    transfer_syntax: str
    study_uid: str = ""
    number: int | None = None  # SeriesNumber
    folder: Path = Path()  # the deepest folder holding all its files

    def __str__(self) -> str:
        return f"{self.uid} '{self.description}' ({self.n_slices} {self.plane} slices)"


@dataclass(frozen=True)
class _Slice:
    """One 2D image: a single-frame file, or one frame of a multi-frame file (``frame`` >= 0).

    position: ImagePositionPatient (LPS mm, centre of the first pixel); orientation: row and column
    cosines; spacing: PixelSpacing (row spacing, column spacing) in mm; padding: stored-value range;
    thickness: SliceThickness, the voxel depth of a single-slice series (which has no slice distance).
    """

    path: Path
    frame: int
    position: tuple[float, float, float]
    orientation: tuple[float, ...]
    spacing: tuple[float, float]
    size: tuple[int, int]
    slope: float
    intercept: float
    padding: tuple[int, int] | None
    tilt: float
    thickness: float
    transfer_syntax: str


def is_dicom_series(path: str | Path) -> bool:
    """True if ``path`` is a folder holding at least one DICOM file (with the 'DICM' preamble).

    Searched recursively, stopping at the first hit; NIfTI files are not opened.
    """
    path = Path(path)
    if not path.is_dir():
        return False
    return any(p.is_file() and not p.name.endswith(NIFTI_SUFFIXES) and is_dicom(p) for p in path.rglob("*"))


def _plane(orientation: tuple[float, ...]) -> str:
    normal = np.cross(orientation[:3], orientation[3:])
    return ("sagittal", "coronal", "axial")[int(np.argmax(np.abs(normal)))]


def _padding(ds: Dataset) -> tuple[int, int] | None:
    """PixelPaddingValue (and RangeLimit) as stored values. On signed pixels the tag is sometimes
    written as US with the two's-complement bit pattern (LIDC: 63536 meaning -2000); pydicom
    returns it as read, so it is reinterpreted here as a signed number of BitsAllocated bits."""
    if "PixelPaddingValue" not in ds:
        return None
    values = [int(ds.PixelPaddingValue), int(ds.get("PixelPaddingRangeLimit", ds.PixelPaddingValue))]
    if int(ds.get("PixelRepresentation", 0)) == 1:
        bits = int(ds.get("BitsAllocated", 16))
        values = [v - (1 << bits) if v >= 1 << (bits - 1) else v for v in values]
    return min(values), max(values)


def _item(groups: Dataset | None, name: str) -> Dataset | None:
    seq = groups.get(name) if groups is not None else None
    return seq[0] if seq else None


def _slices_of(ds: Dataset, path: Path) -> list[_Slice]:
    """The 2D images of one file; AttributeError/KeyError when the geometry tags are missing.

    A multi-frame (Enhanced CT) file gives one slice per frame, each attribute looked up in the
    frame's own functional groups, then the shared ones, then the top level (single-frame files)."""
    shared = _item(ds, "SharedFunctionalGroupsSequence")
    out = []
    for frame, groups in enumerate(ds.get("PerFrameFunctionalGroupsSequence") or [None]):
        found = {name: _item(groups, name) or _item(shared, name) or ds
                 for name in ("PlanePositionSequence", "PlaneOrientationSequence", "PixelMeasuresSequence",
                              "PixelValueTransformationSequence")}
        rescale = found["PixelValueTransformationSequence"]
        out.append(_Slice(
            path=path, frame=frame if groups is not None else -1,
            position=tuple(float(v) for v in found["PlanePositionSequence"].ImagePositionPatient),
            orientation=tuple(float(v) for v in found["PlaneOrientationSequence"].ImageOrientationPatient),
            spacing=tuple(float(v) for v in found["PixelMeasuresSequence"].PixelSpacing),
            size=(int(ds.Rows), int(ds.Columns)),
            slope=float(rescale.get("RescaleSlope", 1.0)), intercept=float(rescale.get("RescaleIntercept", 0.0)),
            padding=_padding(ds), tilt=float(ds.get("GantryDetectorTilt", 0.0) or 0.0),
            thickness=float(ds.get("SliceThickness", 1.0) or 1.0),
            transfer_syntax=str(ds.file_meta.get("TransferSyntaxUID", ""))))
    return out


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file())


def _scan(paths: Iterable[Path]) -> tuple[dict[str, list[_Slice]], dict[str, SeriesInfo], Counter]:
    """Read every file's header; keep CT image slices grouped by SeriesInstanceUID.

    Returns the slices and a description per series, and a count of what was skipped and why
    (for the message when nothing usable is found)."""
    slices: dict[str, list[_Slice]] = defaultdict(list)
    first: dict[str, Dataset] = {}
    skipped: Counter = Counter()
    for path in paths:
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except (InvalidDicomError, OSError, ValueError, EOFError):
            skipped["not DICOM"] += 1
            continue
        sop = str(ds.get("SOPClassUID", ds.file_meta.get("MediaStorageSOPClassUID", "")))
        image_type = {str(v).upper() for v in (ds.get("ImageType") or [])}
        if sop not in CT_STORAGE or ds.get("Modality", "CT") != "CT":
            skipped[f"{ds.get('Modality') or 'no modality'} non-CT-image object"] += 1
        elif image_type & NOT_SLICES or int(ds.get("SamplesPerPixel", 1)) != 1:
            skipped["localizer, screen capture or dose image"] += 1
        elif "SeriesInstanceUID" not in ds:
            skipped["CT image without a series UID"] += 1
        else:
            try:
                new = _slices_of(ds, path)
            except (AttributeError, KeyError, TypeError, ValueError):
                skipped["CT image without position, orientation or pixel spacing"] += 1
                continue
            slices[ds.SeriesInstanceUID].extend(new)
            first.setdefault(ds.SeriesInstanceUID, ds)
    infos = {uid: _describe(ds, slices[uid]) for uid, ds in first.items()}
    return dict(slices), infos, skipped


def _describe(ds: Dataset, slices: list[_Slice]) -> SeriesInfo:
    folders = {s.path.parent for s in slices}
    number = str(ds.get("SeriesNumber", "")).strip()
    return SeriesInfo(uid=ds.SeriesInstanceUID, description=str(ds.get("SeriesDescription", "")).strip(),
                      modality=str(ds.get("Modality", "CT")), n_slices=len(slices), plane=_plane(slices[0].orientation),
                      transfer_syntax=slices[0].transfer_syntax, study_uid=str(ds.get("StudyInstanceUID", "")),
                      number=int(number) if number.lstrip("-").isdigit() else None,
                      folder=Path(*_common_parts(folders)))


def _common_parts(folders: set[Path]) -> tuple[str, ...]:
    parts = [f.parts for f in folders]
    common = []
    for level in zip(*parts, strict=False):
        if len(set(level)) > 1:
            break
        common.append(level[0])
    return tuple(common)


def find_series(folder: str | Path) -> list[SeriesInfo]:
    """The CT image series of a folder tree, largest first, scouts left out; [] if none."""
    return [s for study in _studies(*_scan(_files(Path(folder)))[:2]).values() for s in study]


def _studies(slices: dict[str, list[_Slice]], infos: dict[str, SeriesInfo]) -> dict[str, list[SeriesInfo]]:
    """The candidate series of each study (StudyInstanceUID), largest first: a small series (at
    most LOCALIZER_MAX_SLICES images) in another orientation than the study's largest is a scout."""
    by_study: dict[str, list[SeriesInfo]] = defaultdict(list)
    for info in sorted(infos.values(), key=lambda s: (-s.n_slices, s.uid)):
        by_study[info.study_uid].append(info)
    studies = {}
    for study_uid, ordered in by_study.items():
        main = slices[ordered[0].uid][0].orientation
        studies[study_uid] = [s for s in ordered if s.n_slices > LOCALIZER_MAX_SLICES
                              or np.allclose(slices[s.uid][0].orientation, main, atol=1e-3)]
    return studies


def _take(study: list[SeriesInfo], chosen: Collection[str] = ()) -> list[SeriesInfo]:
    """The series read from one study: those chosen (``--series``), else its one axial series
    (reformats in other planes aside), else its only series; [] when that is ambiguous."""
    picked = [s for s in study if s.uid in chosen]
    if picked:
        return picked
    axial = [s for s in study if s.plane == "axial"]
    if len(axial) == 1:
        return axial
    return study if len(study) == 1 else []


def _check_geometry(series: list[_Slice], where: str) -> tuple[list[_Slice], np.ndarray, float]:
    """Sort the slices along the normal and check that they form one regular grid.

    Returns the sorted slices, the unit slice normal (LPS) and the slice distance in mm. Every
    reason to refuse is collected, so that one message names them all."""
    orientations = {tuple(np.round(s.orientation, 4)) for s in series}
    if len(orientations) > 1:
        raise InputError(f"{where}: mixed slice orientations ({len(orientations)} different "
                         "ImageOrientationPatient values); export each orientation as its own series")
    sizes = {(s.size, tuple(np.round(s.spacing, 4))) for s in series}
    if len(sizes) > 1:
        described = ", ".join(f"{r}x{c} at {sp[0]:g}x{sp[1]:g} mm" for (r, c), sp in sorted(sizes))
        raise InputError(f"{where}: mixed image sizes or pixel spacings ({described}); export each size as its own series")
    row_cos, col_cos = np.array(series[0].orientation[:3]), np.array(series[0].orientation[3:])
    if abs(row_cos @ col_cos) > 1e-3 or not np.allclose([row_cos @ row_cos, col_cos @ col_cos], 1, atol=1e-3):
        raise InputError(f"{where}: ImageOrientationPatient {series[0].orientation} is not two orthogonal unit "
                         "vectors; the headers are damaged")
    normal = np.cross(row_cos, col_cos)
    normal /= np.linalg.norm(normal)
    series = sorted(series, key=lambda s: float(np.dot(s.position, normal)))
    positions = np.array([s.position for s in series])
    along = positions @ normal
    if len(series) == 1:
        return series, normal, series[0].thickness
    gaps = np.diff(along)
    if gaps.min() < 1e-3:
        raise InputError(f"{where}: {int(np.sum(gaps < 1e-3))} slices share a position with another (several phases, "
                         "echoes or reconstructions in one series?); export them as separate series")
    distance = float(np.median(gaps))
    tolerance = min(MAX_POSITION_ERROR_MM, 0.1 * distance)
    problems = []
    tilt = max(abs(s.tilt) for s in series)
    off_axis = np.linalg.norm((positions - positions[0]) - np.outer(along - along[0], normal), axis=1)
    if tilt > 1e-3 or off_axis.max() > tolerance:
        angle = tilt or float(np.degrees(np.arctan2(off_axis[-1], along[-1] - along[0])))
        shifted = f" (slices are shifted {off_axis.max():.1f} mm off the slice normal)" if off_axis.max() > tolerance else ""
        problems.append(f"gantry tilt {angle:.1f} degrees{shifted}")
    steps = gaps / distance
    irregular = np.abs(gaps - distance) > tolerance
    if irregular.any():
        multiples = np.round(steps[irregular])
        if np.all(multiples >= 2) and np.all(np.abs(gaps[irregular] - multiples * distance) <= tolerance * multiples):
            problems.append(f"{int(np.sum(multiples - 1))} missing slices ({int(irregular.sum())} gaps of "
                            f"{gaps[irregular].max():.2f} mm where the other slices are {distance:.2f} mm apart)")
        else:
            problems.append(f"uneven slice spacing ({gaps.min():.2f}-{gaps.max():.2f} mm; tolerance {tolerance:.2f} mm)")
    if problems:
        fix = ("export the complete series" if len(problems) == 1 and "missing" in problems[0] else
               "resample the series to a regular grid first (e.g. dcm2niix corrects gantry tilt and uneven spacing)")
        raise InputError(f"{where}: {'; '.join(problems)}; stacking these slices would distort the volume, {fix}")
    return series, normal, (along[-1] - along[0]) / (len(series) - 1)


def _affine(first: _Slice, normal: np.ndarray, distance: float) -> np.ndarray:
    """Voxel (column, row, slice) -> RAS+ mm. DICOM's patient frame is LPS: the first two rows flip.

    PixelSpacing is (row spacing, column spacing): the distance between rows is along the column
    cosine, the distance between columns along the row cosine."""
    lps = np.eye(4)
    lps[:3, 0] = np.array(first.orientation[:3]) * first.spacing[1]
    lps[:3, 1] = np.array(first.orientation[3:]) * first.spacing[0]
    lps[:3, 2] = normal * distance
    lps[:3, 3] = first.position
    return LPS_TO_RAS @ lps


def _hu_dtype(series: list[_Slice], ds: Dataset) -> type:
    """int16 when every slice's rescale is integral and the largest storable value fits, else float32."""
    bits, signed = int(ds.get("BitsStored", 16)), int(ds.get("PixelRepresentation", 0)) == 1
    top = (1 << (bits - 1 if signed else bits)) - 1
    integral = all(float(s.slope).is_integer() and float(s.intercept).is_integer() for s in series)
    fits = all(top * s.slope + s.intercept <= np.iinfo(np.int16).max and s.slope > 0 for s in series)
    return np.int16 if integral and fits else np.float32


def _decoder_check(transfer_syntax: str, where: str) -> None:
    """Refuse up front, naming the package, when no installed plugin decodes this transfer syntax."""
    if not transfer_syntax:  # no file meta: pydicom reads it as uncompressed
        return
    try:
        available = get_decoder(transfer_syntax).is_available
    except NotImplementedError:
        available = False
    if not available:
        name = pydicom.uid.UID(transfer_syntax).name
        package = next((p for prefix, p in DECODER_PACKAGES.items() if transfer_syntax.startswith(prefix)), None)
        fix = f"install a decoder: pip install {package}" if package else "convert it to an uncompressed transfer syntax"
        raise InputError(f"{where}: pixel data are compressed as {name} and no installed decoder reads it; {fix}")


def load_series(folder: str | Path, series_uid: str | None = None) -> nib.Nifti1Image:
    """Read a CT series from a folder tree as a NIfTI image in HU.

    folder: searched recursively; other series, scouts, non-CT objects and non-DICOM files are
    skipped, and of a study's series its one axial series is taken (``_take``). series_uid: the
    SeriesInstanceUID to read when that is ambiguous (several axial series, or several studies).
    Returns int16 (or float32 for non-integral rescales) HU, shape (columns, rows, slices), RAS+
    affine, qform and sform code 1 (scanner). Padding and outside-FOV values become AIR_HU.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"{folder}: DICOM folder not found; check the path")
    slices, infos, skipped = _scan(_files(folder))
    studies = _studies(slices, infos)
    found = [s for study in studies.values() for s in study]
    if series_uid is not None:
        if series_uid not in infos:
            raise InputError(f"{folder}: no CT series with UID {series_uid}; found: {_listing(found) or 'none'}")
        info = infos[series_uid]
    else:
        _no_series_check(folder, found, skipped)
        taken = [s for study in studies.values() for s in _take(study)]
        if len(studies) > 1 or len(taken) != 1:
            raise _ambiguous(folder, found)
        info = taken[0]
    return _stack(slices[info.uid], f"{folder}: series {info.uid}" + (f" '{info.description}'" if info.description else ""),
                  sum(skipped.values()))


def _listing(series: Iterable[SeriesInfo]) -> str:
    return "; ".join(str(s) for s in series)


def _no_series_check(folder: Path, found: list[SeriesInfo], skipped: Counter) -> None:
    if not found:
        why = ", ".join(f"{n} {reason}" for reason, n in skipped.most_common()) or "no files"
        raise InputError(f"{folder}: no CT image series found ({why}); point to the folder of the CT scan")


def _ambiguous(folder: Path, found: list[SeriesInfo]) -> InputError:
    return InputError(f"{folder}: {len(found)} CT series found, choose one with --series UID: {_listing(found)}")


@contextlib.contextmanager
def _quiet_pydicom() -> Iterator[None]:
    """pydicom logs each failing decoder's traceback before raising; the error raised says it all."""
    pydicom_log = logging.getLogger("pydicom")
    level = pydicom_log.level
    pydicom_log.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        pydicom_log.setLevel(level)


def _stack(series: list[_Slice], where: str, n_skipped: int = 0) -> nib.Nifti1Image:
    """Check, decode and stack one series' slices into a NIfTI image (see ``load_series``)."""
    series, normal, distance = _check_geometry(series, where)
    for transfer_syntax in sorted({s.transfer_syntax for s in series}):
        _decoder_check(transfer_syntax, where)
    by_file: dict[Path, list[tuple[int, _Slice]]] = defaultdict(list)
    for k, s in enumerate(series):
        by_file[s.path].append((k, s))
    rows, cols = series[0].size
    volume: np.ndarray | None = None
    for path, entries in by_file.items():
        try:
            ds = pydicom.dcmread(path)
            with _quiet_pydicom():
                pixels = ds.pixel_array
        except Exception as exc:  # pydicom and its plugins raise many types for damaged pixel data
            reason = " ".join(str(exc).split())  # decoders answer in several lines
            raise InputError(f"{path}: pixel data cannot be decoded ({exc.__class__.__name__}: {reason}); "
                             "is the file complete?") from None
        if volume is None:  # (slices, rows, columns): each slice is one contiguous block
            volume = np.empty((len(series), rows, cols), dtype=_hu_dtype(series, ds))
        for k, s in entries:
            stored = pixels[s.frame] if s.frame >= 0 and pixels.ndim == 3 else pixels  # one frame: 2D
            if stored.shape != (rows, cols):
                raise InputError(f"{path}: pixel data have shape {stored.shape}, the header says {(rows, cols)}")
            hu = stored.astype(np.float32) * np.float32(s.slope) + np.float32(s.intercept)
            if s.padding is not None:
                hu[(stored >= s.padding[0]) & (stored <= s.padding[1])] = AIR_HU
            volume[k] = np.maximum(hu, AIR_HU)
    # (slices, rows, columns) -> (columns, rows, slices) as a view: nibabel writes it without a copy
    img = nib.Nifti1Image(volume.transpose(2, 1, 0), _affine(series[0], normal, distance))
    img.set_qform(img.affine, code=1)
    img.set_sform(img.affine, code=1)
    img.header.set_xyzt_units("mm")
    logger.info("%s: %d slices, %d files skipped", where, len(series), n_skipped)
    return img


def case_label(info: SeriesInfo) -> str:
    """A cohort case's name: ``s<SeriesNumber>-<8 hex digits of SHA-1 of the SeriesInstanceUID>``
    (``s-<hash>`` without a SeriesNumber). Traceable through the cases table, and free of patient
    attributes, which a file name is often shared with."""
    digest = hashlib.sha1(info.uid.encode()).hexdigest()[:8]
    return f"s{'' if info.number is None else info.number}-{digest}"


class SeriesFolder(type(Path())):
    """One case of a DICOM cohort, as a path: the folder holding the series' files, carrying
    what to read (``series``, ``files``) and the case's name (``case``, which ``io.case_name``
    returns), so that code handling cases as paths reads exactly this series.

    ``series`` is None for a study whose series to read is ambiguous: ``read`` then raises,
    listing ``study`` (the study's CT series) so that the user can choose with ``--series``.
    Paths derived from one (``parent``, ``/``) are plain folders: their attributes are None.
    """

    series: SeriesInfo | None = None
    study: tuple[SeriesInfo, ...] = ()
    files: tuple[Path, ...] = ()
    case: str | None = None

    @classmethod
    def of(cls, folder: Path, series: SeriesInfo | None, study: list[SeriesInfo], files: Iterable[Path],
           case: str) -> SeriesFolder:
        path = cls(folder)
        path.series, path.study, path.files, path.case = series, tuple(study), tuple(sorted(set(files))), case
        return path

    def __eq__(self, other: object) -> bool:  # one folder may hold several cases (series)
        return super().__eq__(other) and getattr(other, "series", None) == self.series

    def __hash__(self) -> int:
        return hash((super().__hash__(), self.series.uid if self.series else None))

    def __reduce__(self):  # pickled (e.g. to a worker process) with its attributes
        return SeriesFolder.of, (str(self), self.series, list(self.study), self.files, self.case)

    def read(self) -> nib.Nifti1Image:
        """This case's series as ``load_series`` returns it (headers re-read: files may change)."""
        if self.series is None:
            raise _ambiguous(self, list(self.study))
        slices = _scan(self.files)[0]
        if self.series.uid not in slices:
            raise InputError(f"{self}: series {self.series.uid} is no longer there; run again on the folder")
        description = f" '{self.series.description}'" if self.series.description else ""
        return _stack(slices[self.series.uid], f"{self}: series {self.series.uid}{description}")


def find_cases(source: str | Path, chosen: Collection[str] = ()) -> list[SeriesFolder]:
    """The cases of a DICOM folder tree: per study, the series ``_take`` takes, each a case; a
    study where that is ambiguous is one case that fails when read, listing its series.

    chosen: SeriesInstanceUIDs (``--series``): in their studies only they are read. One case in
    all is named after ``source`` (like a NIfTI file after its name); several are named by
    ``case_label``. Ordered by folder and series number, the same on every run."""
    source = Path(source)
    slices, infos, skipped = _scan(_files(source))
    studies = _studies(slices, infos)
    found = [s for study in studies.values() for s in study]
    _no_series_check(source, found, skipped)
    unknown = sorted(set(chosen) - set(infos))
    if unknown:
        raise InputError(f"{source}: no CT series with UID {unknown[0]}; found: {_listing(found)}")
    cases = []
    for study_uid, study in studies.items():
        taken = _take(study, chosen)
        for info in taken:
            cases.append(SeriesFolder.of(info.folder, info, study, (s.path for s in slices[info.uid]), case_label(info)))
        if not taken:
            digest = hashlib.sha1(study_uid.encode()).hexdigest()[:8]
            folder = Path(*_common_parts({s.folder for s in study}))
            cases.append(SeriesFolder.of(folder, None, study, (), f"study-{digest}"))
    if len(cases) == 1:
        only = cases[0]
        if only.series is None:
            raise _ambiguous(source, found)
        return [SeriesFolder.of(source, only.series, list(only.study), only.files, case_name(source))]
    return sorted(cases, key=lambda c: (str(c), c.series.number or 0 if c.series else -1, c.case))


def write_cases_table(cases: Iterable[Path], path: Path) -> Path | None:
    """``cases.csv``: one row per CT series of the cases' studies: the case it is read as, its
    status (taken, ambiguous, or left out: a study's other series), folder, study and series UIDs,
    SeriesNumber, description, plane and slice count. Written for a cohort of DICOM cases
    (``SeriesFolder``) only: one case is named after its folder and fails alone, leaving nothing.
    Returns the path, or None when nothing was written."""
    cases = [c for c in cases if isinstance(c, SeriesFolder)]
    if len(cases) < 2:
        return None
    read = {c.series.uid: c.case for c in cases if c.series is not None}
    ambiguous = {info.uid: c.case for c in cases if c.series is None for info in c.study}
    rows, seen = [], set()
    for info in (info for c in cases for info in c.study):
        if info.uid in seen:
            continue
        seen.add(info.uid)
        case, status = ((read[info.uid], "taken") if info.uid in read else
                        (ambiguous[info.uid], "ambiguous: choose with --series UID") if info.uid in ambiguous else
                        ("", "left out"))
        rows.append([case, status, info.folder, info.study_uid, info.uid, "" if info.number is None else info.number,
                     info.description, info.plane, info.n_slices])
    text = io.StringIO()
    writer = csv.writer(text)
    writer.writerow(["case", "status", "folder", "study_uid", "series_uid", "series_number", "description", "plane",
                     "slices"])
    writer.writerows(rows)
    return write_text(path, text.getvalue())


def load_image(path: str | Path, series_uid: str | None = None) -> nib.Nifti1Image:
    """An image input: a case of ``find_cases`` (its series), a folder holding a DICOM CT series
    (``load_series``; ``series_uid`` picks one of several), else a NIfTI file (``io.load_volume``)."""
    if isinstance(path, SeriesFolder) and (path.series is not None or path.study):
        return path.read()
    path = Path(path)
    if path.is_dir() and is_dicom_series(path):
        return load_series(path, series_uid)
    return load_volume(path, "image")


def image_cases(folder: str | Path, what: str = "images") -> dict[str, Path]:
    """Case name -> image of a folder of volumes: its volume files (NIfTI, NRRD, MetaImage; named
    by ``io.case_name``) and its subfolders that hold a DICOM series (named by folder name; each
    must hold one study's one axial series, as ``load_series`` reads without ``--series``)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"{folder}: {what} folder not found; check the path")
    series = {p.name: p for p in sorted(folder.iterdir()) if p.is_dir() and not p.name.startswith(".")
              and is_dicom_series(p)}
    if not series:
        return {case_name(p): p for p in list_niftis(folder, what)}
    niftis = {case_name(p): p for p in sorted(folder.iterdir()) if p.is_file() and is_volume(p)}
    both = sorted(set(series) & set(niftis))
    if both:
        raise InputError(f"{folder}: case {both[0]} is both a NIfTI file and a DICOM folder; keep one of them")
    return {**niftis, **series}


def on_series_grid(other: nib.Nifti1Image, series: nib.Nifti1Image) -> nib.Nifti1Image:
    """``other`` (e.g. a label map drawn on a dcm2niix conversion, whose rows run the other way)
    with its axes permuted and flipped onto the grid of the DICOM ``series`` when it holds the
    same voxels in another order (exact: no resampling); else ``other`` unchanged, for
    ``io.check_same_grid`` to refuse."""
    from nibabel.orientations import apply_orientation, inv_ornt_aff, io_orientation, ornt_transform

    transform = ornt_transform(io_orientation(other.affine), io_orientation(series.affine))
    affine = other.affine @ inv_ornt_aff(transform, other.shape)
    shape = tuple(int(other.shape[int(a)]) for a in np.argsort(transform[:, 0]))
    if shape != tuple(series.shape[:3]) or not np.allclose(affine, series.affine, atol=1e-4):
        return other
    return nib.Nifti1Image(apply_orientation(np.asanyarray(other.dataobj), transform), series.affine, other.header)
