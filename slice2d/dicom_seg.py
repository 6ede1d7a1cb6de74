"""DICOM Segmentation (SEG) out: the maps of a case read from a DICOM series, as one SEG object
that references the series' instances, for viewers and PACS (written with highdicom).

Each label of the lesion, lung and lobe maps becomes one segment (BINARY segmentation type, so
segments may overlap: a lesion lies inside a lobe inside a lung), with a label, an algorithm
and coded concepts. Codes follow the DICOM context groups as pydicom ships them
(``pydicom.sr.codedict.codes``, DICOM PS3.16):

- categories (CID 7150 Segmentation Property Category): SCT 91723000 Anatomical Structure for the
  lungs and lobes, SCT 49755003 Morphologically Abnormal Structure for lesions;
- lungs: SCT 39607008 Lung (CID 7151), with the laterality modifier SCT 24028007 Right or
  SCT 7771000 Left (CID 244), as DICOM codes paired structures;
- lobes (CID 6170 Lobe of Lung): SCT 45653009 Upper lobe of lung and SCT 90572001 Lower lobe of
  lung with a laterality modifier, SCT 72481006 Middle lobe of right lung (unpaired);
- ground-glass opacity: DCM 112120 Ground glass opacity (CID 6104 Abnormal Opacity Finding or
  Feature; DICOM codes it in its own scheme, not SNOMED CT); consolidation: SCT 95436008 Lung
  consolidation (SNOMED CT; no DICOM context group holds a consolidation concept); infection of a
  binary lesion model: SCT 52988006 Lesion.

Frame f of the SEG is source instance f in slice order, ``map[:, :, k].T`` of the NIfTI map
(slice2d.dicom's layout: voxel (i, j, k) = (column, row, sorted slice)); each source file is
matched to its slice k by its ImagePositionPatient on the map's grid, never by name or number.

``read_seg`` reads a SEG back (``evaluate``): the segments of one map kind as a label map on the
grid of the map it is compared with, each segment recognised by its codes (the inverse of the
table above; lobes in slice2d's convention) or, for another tool's codes, by its segment number.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pydicom.pixels
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.sr.codedict import codes

from slice2d import __version__
from slice2d.io import InputError, atomic_path

logger = logging.getLogger(__name__)

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
ON_GRID_TOLERANCE = 0.01  # voxels: a source slice's first pixel must lie this close to its grid point
# type 2 attributes (present, possibly empty) that a SEG copies from its source; anonymised series may lack them
COPIED_TYPE2 = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "AccessionNumber", "StudyID",
                "StudyDate", "StudyTime")


@dataclass(frozen=True)
class Segment:
    """One segment: the voxels of ``value`` in map ``source`` ("lesions", "lungs", "lobes")."""

    source: str
    value: int
    label: str
    category: pydicom.sr.coding.Code
    type: pydicom.sr.coding.Code
    modifier: pydicom.sr.coding.Code | None = None


ANATOMY, ABNORMAL = codes.SCT.AnatomicalStructure, codes.SCT.MorphologicallyAbnormalStructure
RIGHT, LEFT = codes.SCT.Right, codes.SCT.Left
CONSOLIDATION = pydicom.sr.coding.Code("95436008", "SCT", "Lung consolidation")  # not in pydicom's codes
LOBE_CODES = {  # lobe name -> (label, type, laterality); CID 6170
    "RUL": ("Right upper lobe", codes.SCT.UpperLobeOfLung, RIGHT),
    "RML": ("Right middle lobe", codes.SCT.MiddleLobeOfRightLung, None),
    "RLL": ("Right lower lobe", codes.SCT.LowerLobeOfLung, RIGHT),
    "LUL": ("Left upper lobe", codes.SCT.UpperLobeOfLung, LEFT),
    "LLL": ("Left lower lobe", codes.SCT.LowerLobeOfLung, LEFT),
}
ALGORITHM_FAMILY = {"lesions": codes.cid7162.ArtificialIntelligence, "lobes": codes.cid7162.ArtificialIntelligence,
                    "lungs": codes.cid7162.ArtificialIntelligence}  # (the built-in lung extraction: MorphologicalOperations)


def lesion_segments(n_classes: int) -> list[Segment]:
    """Two foreground classes: 1 ground-glass opacity, 2 consolidation; one: 1 infection."""
    if n_classes == 3:
        return [Segment("lesions", 1, "Ground-glass opacity", ABNORMAL, codes.DCM.GroundGlassOpacity),
                Segment("lesions", 2, "Consolidation", ABNORMAL, CONSOLIDATION)]
    return [Segment("lesions", 1, "Infection", ABNORMAL, codes.SCT.Lesion)]


LUNG_SEGMENTS = [Segment("lungs", 1, "Right lung", ANATOMY, codes.SCT.Lung, RIGHT),
                 Segment("lungs", 2, "Left lung", ANATOMY, codes.SCT.Lung, LEFT)]


def lobe_segments(lobe_labels: Mapping[int, str]) -> list[Segment]:
    """The five lobes of a lobe map whose values ``lobe_labels`` names (``severity.LOBE_PRESETS``)."""
    by_name = {name: value for value, name in lobe_labels.items()}
    return [Segment("lobes", by_name[name], label, ANATOMY, kind, side)
            for name, (label, kind, side) in LOBE_CODES.items()]


def source_datasets(folder: Path, img: nib.Nifti1Image, series_uid: str | None = None,
                    files: Sequence[Path] = ()) -> list[Dataset]:
    """The headers (no pixel data) of the series that ``img`` was read from, in its slice order k.

    folder: the series folder (searched recursively), or ``files`` when given (a cohort case's
    own files). series_uid: the series to take; otherwise the one series whose slices lie on
    ``img``'s grid, one per slice, is found. Raises ``InputError`` when no series matches (e.g. a
    multi-frame series: one file holds every slice) or several do. Type 2 patient and study
    attributes missing from the headers are added empty (the SEG copies them)."""
    paths = list(files) or sorted(p for p in Path(folder).rglob("*") if p.is_file())
    by_series: dict[str, list[Dataset]] = {}
    for path in paths:
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except (InvalidDicomError, OSError, ValueError, EOFError):
            continue
        if "ImagePositionPatient" in ds and "SeriesInstanceUID" in ds and ds.get("Modality", "CT") == "CT":
            by_series.setdefault(str(ds.SeriesInstanceUID), []).append(ds)
    candidates = [series_uid] if series_uid else sorted(by_series)
    matches = {uid: ordered for uid in candidates if (ordered := _on_grid(by_series.get(uid, []), img)) is not None}
    if not matches:
        raise InputError(f"{folder}: no single-frame CT series in this folder lies slice for slice on the grid that "
                         "was read; a DICOM SEG needs one file per slice (multi-frame CT is not supported)")
    if len(matches) > 1:
        raise InputError(f"{folder}: series {' and '.join(matches)} all lie on the grid that was read; "
                         "choose one with --series UID")
    (uid, ordered), = matches.items()
    if "FrameOfReferenceUID" not in ordered[0]:
        raise InputError(f"{folder}: series {uid} has no FrameOfReferenceUID, which a DICOM SEG must "
                         "share with its source; the files are not complete CT images")
    for ds in ordered:
        for keyword in COPIED_TYPE2:
            if keyword not in ds:
                setattr(ds, keyword, None)
    return ordered


def _on_grid(datasets: list[Dataset], img: nib.Nifti1Image) -> list[Dataset] | None:
    """``datasets`` sorted by slice k when there is exactly one for each slice of ``img``, each with
    its first pixel on voxel (0, 0, k) and its rows and columns along the grid's axes; else None."""
    n_slices = img.shape[2]
    if len(datasets) != n_slices:
        return None
    to_voxel = np.linalg.inv(img.affine)
    slot: dict[int, Dataset] = {}
    for ds in datasets:
        ras = LPS_TO_RAS @ [*(float(v) for v in ds.ImagePositionPatient), 1.0]
        i, j, k = (to_voxel @ ras)[:3]
        if max(abs(i), abs(j), abs(k - round(k))) > ON_GRID_TOLERANCE or not 0 <= round(k) < n_slices:
            return None
        if (int(ds.Rows), int(ds.Columns)) != (img.shape[1], img.shape[0]) or not _axes_match(ds, img.affine):
            return None
        slot[round(k)] = ds
    return [slot[k] for k in range(n_slices)] if len(slot) == n_slices else None


def _axes_match(ds: Dataset, affine: np.ndarray) -> bool:
    """The row and column cosines of ``ds`` run along the grid's first and second axes."""
    axes = LPS_TO_RAS[:3, :3] @ affine[:3, :2]
    axes /= np.linalg.norm(axes, axis=0)
    cosines = np.asarray([float(v) for v in ds.ImageOrientationPatient]).reshape(2, 3).T
    return bool(np.allclose(axes, cosines, atol=1e-4))


def _description(number: int, segment: Segment, family: pydicom.sr.coding.Code, model: str):
    import highdicom as hd

    description = hd.seg.SegmentDescription(
        segment_number=number, segment_label=segment.label,
        segmented_property_category=segment.category, segmented_property_type=segment.type,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=hd.AlgorithmIdentificationSequence(name=model, family=family, version=__version__))
    if segment.modifier is not None:
        description.SegmentedPropertyTypeCodeSequence[0].SegmentedPropertyTypeModifierCodeSequence = [
            hd.sr.CodedConcept(segment.modifier.value, segment.modifier.scheme_designator, segment.modifier.meaning)]
    return description


def write_seg(sources: list[Dataset], maps: Mapping[str, np.ndarray], segments: Sequence[Segment], path: Path,
              families: Mapping[str, pydicom.sr.coding.Code] | None = None) -> Path:
    """Write the SEG of ``maps`` ({source: label map (X, Y, Z) on the series' grid}) over the
    source instances ``sources`` (slice order k) to ``path``, atomically.

    segments: what each segment is (``lesion_segments``, ``LUNG_SEGMENTS``, ``lobe_segments``);
    segments whose map is absent from ``maps`` are left out. families: {source: algorithm family
    (CID 7162)} where it is not ``ALGORITHM_FAMILY``'s, recorded with the algorithm name
    ``slice2d <source>`` in each segment."""
    import highdicom as hd

    segments = [s for s in segments if s.source in maps]
    if not segments:
        raise ValueError("no maps to write as DICOM SEG")
    families = {**ALGORITHM_FAMILY, **(families or {})}
    # (frames, rows, columns, segments): frame k is map[:, :, k] transposed to (rows, columns)
    pixels = np.zeros((len(sources), *maps[segments[0].source].shape[1::-1], len(segments)), dtype=bool)
    for s, segment in enumerate(segments):
        pixels[..., s] = maps[segment.source].transpose(2, 1, 0) == segment.value
    descriptions = [_description(n, seg, families[seg.source], f"slice2d {seg.source}")
                    for n, seg in enumerate(segments, 1)]
    with warnings.catch_warnings():  # the patient's name is copied from the source as it is stored
        warnings.filterwarnings("ignore", message=".*intended person name")
        seg = hd.seg.Segmentation(
            source_images=sources, pixel_array=pixels, segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
            segment_descriptions=descriptions, series_instance_uid=hd.UID(), series_number=900,
            sop_instance_uid=hd.UID(), instance_number=1, manufacturer="slice2d", manufacturer_model_name="slice2d",
            software_versions=__version__, device_serial_number="0", series_description="slice2d segmentation",
            content_label="SLICE2D", content_description="lesions, lungs and lobes found by slice2d")
    with atomic_path(path) as tmp:
        seg.save_as(tmp)
    return path


SEG_TASKS = ("lesions", "lungs", "lobes")  # map kinds that have codes here


def require_series(inputs: Sequence[Path], task: str) -> None:
    """``predict --dicom-seg``, before anything is written: every input must be a DICOM series
    (a SEG references its source images), the model's maps must be lesions, lungs or lobes, and
    highdicom must be installed."""
    from slice2d.dicom import is_dicom_series

    others = [p for p in inputs if getattr(p, "series", None) is None and not is_dicom_series(p)]
    if others:
        raise InputError(f"{others[0]}: --dicom-seg needs DICOM series as input (a SEG references the series' "
                         "images); this is not one. Leave out --dicom-seg for NIfTI, NRRD or MetaImage input")
    if task not in SEG_TASKS:
        raise InputError(f"--dicom-seg: the model's task is {task!r}; DICOM SEG codes exist here for "
                         f"{', '.join(SEG_TASKS)} maps")
    try:
        import highdicom  # noqa: F401
    except ImportError:
        raise InputError("--dicom-seg needs highdicom: pip install 'slice2d[dicom-seg]'") from None


def write_case_seg(source: Path, img: nib.Nifti1Image, maps: Mapping[str, np.ndarray | None], out_dir: Path,
                   case: str, lesion_classes: int = 2, lobe_labels: str = "slice2d", lung_source: str = "builtin") -> Path:
    """The SEG of one case of ``predict``: ``out_dir/dicom-seg/<case>.dcm``.

    source: the series folder (a ``dicom.SeriesFolder`` carries its files and series; a plain
    folder is searched for the series that lies on ``img``'s grid); img: the image read from it; maps: {"lesions"|"lungs"|"lobes": map or None}.
    lesion_classes: of the lesion model (3: ground-glass and consolidation). lobe_labels: the lobe
    map's convention (``severity.LOBE_PRESETS``). lung_source: how the lungs were found
    (``anatomy.LUNG_SOURCES``), recorded as the lung segments' algorithm family."""
    from slice2d.severity import LOBE_PRESETS

    maps = {kind: m for kind, m in maps.items() if m is not None}
    series = getattr(source, "series", None)
    sources = source_datasets(source, img, series.uid if series is not None else None, getattr(source, "files", ()))
    segments = lesion_segments(lesion_classes) + LUNG_SEGMENTS + lobe_segments(LOBE_PRESETS[str(lobe_labels)])
    families = {"lungs": codes.cid7162.MorphologicalOperations if lung_source == "builtin"
                else codes.cid7162.ArtificialIntelligence}
    return write_seg(sources, maps, segments, out_dir / "dicom-seg" / f"{case}.dcm", families=families)


# ---- DICOM SEG in: a SEG's segments as a label map on a given grid (``evaluate``) ----

SEG_SOP_CLASSES = ("1.2.840.10008.5.1.4.1.1.66.4", "1.2.840.10008.5.1.4.1.1.66.7")  # Segmentation, Label Map Segmentation


def _code_key(scheme: str, value: str, modifier: tuple[str, str] | None) -> tuple:
    return (str(scheme), str(value), modifier)


def known_segments() -> dict[tuple, tuple[str, int]]:
    """{segmented property type code (with its laterality modifier): (map kind, label value)}: the
    exact inverse of the segments ``write_case_seg`` writes; lobes in slice2d's convention."""
    from slice2d.severity import LOBE_PRESETS

    segments = lesion_segments(3) + lesion_segments(2) + LUNG_SEGMENTS + lobe_segments(LOBE_PRESETS["slice2d"])
    return {_code_key(s.type.scheme_designator, s.type.value,
                      s.modifier and (s.modifier.scheme_designator, s.modifier.value)): (s.source, s.value)
            for s in segments}


def _segment_key(item: Dataset) -> tuple:
    kind = item.SegmentedPropertyTypeCodeSequence[0]
    modifiers = kind.get("SegmentedPropertyTypeModifierCodeSequence") or []
    modifier = (str(modifiers[0].CodingSchemeDesignator), str(modifiers[0].CodeValue)) if modifiers else None
    return _code_key(kind.CodingSchemeDesignator, kind.CodeValue, modifier)


def segment_values(seg: Dataset, kind: str, path: Path) -> dict[int, int]:
    """{segment number: label value} of the segments of map ``kind`` ("lesions", "lungs", "lobes")
    in ``seg``, recognised by their codes (``known_segments``). A SEG none of whose segments has
    slice2d's codes (another tool's) gives each segment its number as label value, with a
    warning naming them. Raises ``InputError`` when the SEG has slice2d's codes but none of ``kind``."""
    known = known_segments()
    found = {int(item.SegmentNumber): (known.get(_segment_key(item)), str(item.get("SegmentLabel", "")))
             for item in seg.SegmentSequence}
    listing = ", ".join(f"{n} {label!r}" for n, (_, label) in sorted(found.items()))
    if not any(hit for hit, _ in found.values()):
        if max(found, default=0) > 255:
            raise InputError(f"{path}: segment numbers above 255 and codes that are not slice2d's; a label map "
                             "holds values 0..255")
        logger.warning("%s: segment codes are not slice2d's; label value = segment number: %s", path, listing)
        return {n: n for n in found}
    chosen = {n: hit[1] for n, (hit, _) in found.items() if hit and hit[0] == kind}
    if not chosen:
        kinds = sorted({hit[0] for hit, _ in found.values() if hit})
        raise InputError(f"{path}: this DICOM SEG holds no {kind} segments (its segments: {listing}); "
                         f"choose --seg-segments {' or '.join(kinds)}")
    return chosen


def _frame_geometry(seg: Dataset, index: int, where: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ImagePositionPatient, ImageOrientationPatient and PixelSpacing of frame ``index``, from its
    per-frame functional groups or else the shared ones."""
    groups = [seg.PerFrameFunctionalGroupsSequence[index], *seg.get("SharedFunctionalGroupsSequence", [])]

    def attribute(sequence: str, keyword: str) -> np.ndarray:
        for group in groups:
            if sequence in group and keyword in group[sequence][0]:
                return np.asarray([float(v) for v in group[sequence][0][keyword]])
        raise InputError(f"{where}: SEG frame {index + 1} has no {keyword}; the file is not a complete DICOM SEG")

    return (attribute("PlanePositionSequence", "ImagePositionPatient"),
            attribute("PlaneOrientationSequence", "ImageOrientationPatient"),
            attribute("PixelMeasuresSequence", "PixelSpacing"))


@dataclass(frozen=True)
class Placement:
    """Where a SEG frame lies on a grid: slice ``k`` along axis ``normal``; frame columns run along
    grid axis ``col_axis`` (``col_sign`` -1: backwards), frame rows along ``row_axis``."""

    normal: int
    k: int
    col_axis: int
    col_sign: int
    row_axis: int
    row_sign: int

    def put(self, volume: np.ndarray, frame: np.ndarray) -> np.ndarray:
        """The view of ``volume``'s slice that ``frame`` (rows, columns) covers, as ``frame`` indexes it."""
        index: list = [slice(None)] * 3
        index[self.normal] = self.k
        plane = volume[tuple(index)]  # axes (min(col, row), max(col, row))
        if self.col_axis > self.row_axis:
            plane = plane.T
        plane = plane[::self.col_sign, ::self.row_sign]
        return plane.T  # (rows, columns), a view


def _axis_of(step: np.ndarray, n: int) -> tuple[int, int] | None:
    """(axis, sign) when ``step`` (voxels per frame pixel) is one voxel along one grid axis, to
    within ``ON_GRID_TOLERANCE`` over ``n`` pixels; else None."""
    axis = int(np.argmax(np.abs(step)))
    sign = 1 if step[axis] > 0 else -1
    target = np.zeros(3)
    target[axis] = sign
    return (axis, sign) if np.abs(step - target).max() * max(n - 1, 1) <= ON_GRID_TOLERANCE else None


def _placement(seg: Dataset, index: int, grid: nib.Nifti1Image, where: str) -> Placement:
    """The ``Placement`` of frame ``index`` of ``seg`` on ``grid``; ``InputError`` saying what differs
    when it does not cover one whole slice of the grid, pixel on voxel."""
    position, orientation, spacing = _frame_geometry(seg, index, where)
    rows, cols = int(seg.Rows), int(seg.Columns)
    to_voxel = np.linalg.inv(grid.affine)
    lps_to_voxel = to_voxel[:3, :3] @ LPS_TO_RAS[:3, :3]
    col = _axis_of(lps_to_voxel @ (orientation[:3] * spacing[1]), cols)
    row = _axis_of(lps_to_voxel @ (orientation[3:] * spacing[0]), rows)
    if col is None or row is None or col[0] == row[0]:
        sizes = nib.affines.voxel_sizes(grid.affine).round(4).tolist()
        raise InputError(f"{where}: the SEG's frames (orientation {orientation.round(4).tolist()}, pixel spacing "
                         f"{spacing.round(4).tolist()} mm) do not run along the voxel axes of the grid (voxel sizes "
                         f"{sizes} mm); the SEG must be on the same grid as the map it is compared with")
    normal = 3 - col[0] - row[0]
    if (grid.shape[col[0]], grid.shape[row[0]]) != (cols, rows):
        raise InputError(f"{where}: the SEG's frames are {rows}x{cols} pixels, the grid's slices "
                         f"{grid.shape[row[0]]}x{grid.shape[col[0]]}; the SEG must be on the same grid as the map "
                         "it is compared with")
    voxel = (to_voxel @ (LPS_TO_RAS @ [*position, 1.0]))[:3]
    start = {col[0]: 0 if col[1] > 0 else cols - 1, row[0]: 0 if row[1] > 0 else rows - 1}
    k = round(voxel[normal])
    off = max(abs(voxel[normal] - k), *(abs(voxel[axis] - first) for axis, first in start.items()))
    if off > ON_GRID_TOLERANCE or not 0 <= k < grid.shape[normal]:
        raise InputError(f"{where}: SEG frame {index + 1} (ImagePositionPatient {position.round(4).tolist()}) lies at "
                         f"voxel {voxel.round(3).tolist()} of the grid, not on one of its slices; the SEG must be "
                         "on the same grid as the map it is compared with")
    return Placement(normal, k, col[0], col[1], row[0], row[1])


def _frame_masks(seg: Dataset, frame: np.ndarray, index: int, values: Mapping[int, int]):
    """(segment number, mask) of one decoded frame: a LABELMAP frame holds segment numbers, a
    BINARY or FRACTIONAL frame one segment (FRACTIONAL: in where at least half the maximum)."""
    if seg.SegmentationType == "LABELMAP":
        return [(number, frame == number) for number in values]
    number = _segment_of(seg, index)
    if seg.SegmentationType == "FRACTIONAL":
        return [(number, frame >= 0.5 * float(seg.MaximumFractionalValue))]
    return [(number, frame > 0)]


def read_seg(path: Path, grid: nib.Nifti1Image, kind: str = "lesions", grid_name: str = "") -> np.ndarray:
    """The segments of map ``kind`` (``segment_values``) of the DICOM SEG ``path`` as a uint8 label
    map on ``grid`` (the image of the map it is compared with): each frame's ImagePositionPatient,
    orientation and pixel spacing must put it on one whole slice of ``grid``, pixel on voxel
    (``ON_GRID_TOLERANCE``); frames absent from the SEG (it stores non-empty frames only) are 0.
    Read with pydicom alone. Raises ``InputError`` naming ``path`` for a file that is not a SEG, a SEG
    off the grid, or segments of different labels that overlap."""
    path = Path(path)
    where = f"{path} (compared with {grid_name})" if grid_name else str(path)
    try:
        seg = pydicom.dcmread(path, stop_before_pixels=True)
    except (InvalidDicomError, OSError, ValueError, EOFError) as exc:
        raise InputError(f"{path}: cannot be read as DICOM ({exc.__class__.__name__}); a .dcm label map must be "
                         "a DICOM Segmentation object") from None
    if seg.get("SOPClassUID") not in SEG_SOP_CLASSES:
        what = getattr(seg.get("SOPClassUID"), "name", None) or "no SOP class"
        raise InputError(f"{path}: not a DICOM Segmentation object ({what}); a .dcm label map must be a DICOM SEG")
    n_frames = int(seg.get("NumberOfFrames", 1))
    try:
        values = segment_values(seg, kind, path)
        placements = [_placement(seg, i, grid, where) for i in range(n_frames)]
        wanted = [i for i in range(n_frames) if seg.SegmentationType == "LABELMAP" or _segment_of(seg, i) in values]
    except (AttributeError, IndexError, KeyError, TypeError) as exc:
        raise InputError(f"{path}: the DICOM SEG's segments or frames cannot be read ({exc}); is the file "
                         "complete?") from None
    volume = np.zeros(grid.shape[:3], dtype=np.uint8)
    for index, frame in zip(wanted, _decoded(path, seg, wanted), strict=True):
        target = placements[index].put(volume, frame)
        for number, mask in _frame_masks(seg, frame, index, values):
            if (mask & (target != 0) & (target != values[number])).any():
                raise InputError(f"{path}: segment {number} overlaps a segment of another label on frame "
                                 f"{index + 1}; a label map holds one label per voxel")
            target[mask] = values[number]
    return volume


def _segment_of(seg: Dataset, index: int) -> int:
    """The segment number of frame ``index`` of a BINARY or FRACTIONAL SEG."""
    return int(seg.PerFrameFunctionalGroupsSequence[index].SegmentIdentificationSequence[0].ReferencedSegmentNumber)


def _decoded(path: Path, seg: Dataset, indices: list[int]):
    """The frames ``indices`` of a SEG's pixel data, decoded one by one (pydicom; uncompressed
    1-bit frames unpacked here, since pydicom 3.0 misplaces a frame that starts within a byte)."""
    try:
        if int(seg.BitsAllocated) == 1 and not seg.file_meta.TransferSyntaxUID.is_compressed:
            yield from _bit_frames(path, int(seg.Rows), int(seg.Columns), indices)
        else:
            yield from pydicom.pixels.iter_pixels(path, indices=indices)
    except (ValueError, NotImplementedError, RuntimeError) as exc:
        raise InputError(f"{path}: the DICOM SEG's pixel data cannot be decoded ({exc.__class__.__name__}: "
                         f"{exc})") from None


def _bit_frames(path: Path, rows: int, cols: int, indices: list[int]):
    """Frames of uncompressed 1-bit pixel data: the bits of all frames follow one another, the
    first pixel in the lowest bit of a byte (PS3.5 8.1.1), so a frame may start within a byte."""
    data = np.frombuffer(pydicom.dcmread(path).PixelData, dtype=np.uint8)
    n = rows * cols
    for index in indices:
        start = index * n
        if (start + n + 7) // 8 > data.size:
            raise ValueError(f"frame {index + 1} lies past the end of the pixel data")
        bits = np.unpackbits(data[start // 8:(start + n + 7) // 8], bitorder="little")
        yield bits[start % 8:start % 8 + n].reshape(rows, cols)
