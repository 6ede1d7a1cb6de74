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
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.sr.codedict import codes

from slice2d import __version__
from slice2d.io import InputError, atomic_path

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
