"""What a finished job offers: the files to take home, named after the case, and what the
viewer shows.

From the folder ``slice2d predict`` wrote, ``take_home`` gathers the scan as NIfTI (the upload
itself; a DICOM series converted; the stack of a slice folder), the lesion and lung maps, the
regions (the lobe map, or the six zones the report was scored on, written here so that the viewer
can show them), the JSON report, its one-page PNG, the cohort CSV, a one-page PDF report, a zip
of the maps (the PNG slices, for a slice folder) and, for a DICOM series, its DICOM SEG.
"""

from __future__ import annotations

import json
import re
import textwrap
import zipfile
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from slice2d import __version__
from slice2d.dicom import is_dicom_series, load_image
from slice2d.io import InputError, atomic_path, case_name, is_nifti, output_name, save_like
from slice2d.severity import LOBE_PRESETS
from slice2d.zones import ZONE_NAMES, lung_zones

LUNG_NAMES = {1: "right lung", 2: "left lung"}
LESION_NAMES = {1: {1: "infection"}, 2: {1: "ground-glass opacity", 2: "consolidation"}}
PDF_SIZE_IN = (11.69, 8.27)  # A4 landscape


@dataclass(frozen=True)
class TakeHome:
    """A finished job: ``report`` (the JSON ``slice2d predict`` wrote, as a dict), ``files``
    (download name -> file), ``links`` (key -> download name: scan, lesions, lungs, lobes or
    zones, report_json, report_png, report_pdf, cohort_csv, maps_zip; dicom_seg for a DICOM series
    predicted with ``--dicom-seg``), the label names of each
    map, whether the scan is in HU or 8-bit, and ``focus_mm``, the world point (RAS+ mm) where the
    viewer opens: the middle of the axial slice with the most lesion (else with the most lung)."""

    report: dict
    files: dict[str, Path]
    links: dict[str, str]
    labels: dict[str, dict[int, str]]
    intensity: str
    focus_mm: list[float]

    def view(self, prefix: str) -> dict:
        """What the page's viewer loads, with URLs under ``prefix``: the scan, then the overlays
        from bottom to top."""
        overlays = [{"key": key, "url": prefix + self.links[key], "labels": self.labels[key]}
                    for key in ("lobes", "zones", "lungs", "lesions") if key in self.links]
        return {"scan": prefix + self.links["scan"], "overlays": overlays, "intensity": self.intensity,
                "focus_mm": self.focus_mm}


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", name)


def take_home(source: Path, out: Path, dest: Path, settings) -> TakeHome:
    """Gather the results of ``slice2d predict SOURCE --out OUT`` and write the files made here
    (scan of a DICOM series, zone map, PDF, zip of the maps) into ``dest``.

    settings: the app's ``jobs.Settings`` (its zone options, and its models for the PDF's footer).
    Raises ``InputError`` when no severity report was made (slices of different sizes).
    """
    slices = source.is_dir() and not is_dicom_series(source)
    case = source.name if slices else case_name(source)
    reports = sorted((out / "severity").glob("*.json"))
    if not reports:
        raise InputError(f"{source}: no severity report could be made (slices of different sizes?); "
                         "send slices of one size")
    report = json.loads(reports[0].read_text())
    stem = _safe(case)
    files: dict[str, Path] = {}
    links: dict[str, str] = {}

    def offer(key: str, path: Path, name: str) -> None:
        files[name], links[key] = path, name

    if slices:
        scan, lesions, lungs = out / "stack" / "image.nii.gz", out / "stack" / "lesions.nii.gz", out / "stack" / "lungs.nii.gz"
        maps = {f"lesions/{p.name}": p for p in sorted(out.glob("*.png"))}
        maps.update({f"lungs/{p.name}": p for p in sorted((out / "lungs").glob("*.png"))})
    else:
        name = output_name(source)
        scan = source if is_nifti(source) else _scan_of_series(source, dest / f"{stem}-scan.nii.gz")
        lesions, lungs = out / name, out / "lungs" / name
        maps = {}
    offer("scan", scan, f"{stem}-scan.nii.gz")
    offer("lesions", lesions, f"{stem}-lesions.nii.gz")
    offer("lungs", lungs, f"{stem}-lungs.nii.gz")
    lung_img = nib.load(lungs)
    lung_map = np.asarray(lung_img.dataobj)
    lobes = out / "lobes" / lungs.name
    if not slices and lobes.is_file():
        offer("lobes", lobes, f"{stem}-lobes.nii.gz")
        region_names = LOBE_PRESETS["slice2d"]
    else:
        zones = settings.options.scoring.zones
        path = save_like(lung_zones(lung_map, lung_img.affine, zones.method, zones.joint), lung_img,
                         dest / f"{stem}-zones.nii.gz")
        offer("zones", path, path.name)
        region_names = ZONE_NAMES
    key = "lobes" if "lobes" in links else "zones"
    if not slices:
        maps.update({links[k]: files[links[k]] for k in ("lesions", "lungs", key)})
    offer("report_json", reports[0], f"{stem}-report.json")
    offer("report_png", reports[0].with_suffix(".png"), f"{stem}-report.png")
    offer("cohort_csv", out / "severity" / "cohort.csv", f"{stem}-cohort.csv")
    offer("report_pdf", report_pdf(report, reports[0].with_suffix(".png"), dest / f"{stem}-report.pdf",
                                   _models_note(settings)), f"{stem}-report.pdf")
    offer("maps_zip", _zip(maps, dest / f"{stem}-maps.zip"), f"{stem}-maps.zip")
    seg = out / "dicom-seg" / f"{case}.dcm"
    if seg.is_file():
        offer("dicom_seg", seg, f"{stem}-seg.dcm")
    lesion_img = nib.load(lesions)
    labels = {"lesions": LESION_NAMES[2 if report.get("lesion_classes") == 2 else 1], "lungs": LUNG_NAMES,
              key: dict(region_names)}
    focus = focus_mm(np.asarray(lesion_img.dataobj), lung_map, lesion_img.affine)
    return TakeHome(report, files, links, labels, "8-bit" if slices else "HU", focus)


def _scan_of_series(folder: Path, path: Path) -> Path:
    """The DICOM series in ``folder`` written as NIfTI (the grid its maps were written on)."""
    img = load_image(folder)
    with atomic_path(path) as tmp:
        nib.save(img, tmp)
    return path


def _zip(members: dict[str, Path], path: Path) -> Path:
    """A zip of ``members`` (name in the archive -> file), stored uncompressed (NIfTI maps are
    gzipped and PNGs compressed already)."""
    with atomic_path(path) as tmp, zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED) as zf:
        for name, file in members.items():
            zf.write(file, name)
    return path


def focus_mm(lesions: np.ndarray, lungs: np.ndarray, affine: np.ndarray) -> list[float]:
    """The world point (RAS+ mm) in the middle of the axial slice holding the most lesion voxels
    (the most lung voxels when there is no lesion). lesions, lungs: label maps on the grid of
    ``affine``, shape (X, Y, Z) in any orientation."""
    axial = int(np.argmax(np.abs(nib.orientations.io_orientation(affine)[:, 0] - 2) < 0.5))
    mask = lesions > 0 if lesions.any() else lungs > 0
    counts = mask.sum(axis=tuple(a for a in range(3) if a != axial))
    voxel = (np.asarray(mask.shape, dtype=float) - 1) / 2
    voxel[axial] = float(np.argmax(counts))
    return [round(float(v), 3) for v in nib.affines.apply_affine(affine, voxel)]


def _models_note(settings) -> str:
    models = settings.models
    main = models.main or "shipped lesion model"
    lungs = f", lungs {models.lungs}" if models.lungs else ""
    return f"slice2d {__version__}; model {main}{lungs}"


def report_pdf(report: dict, figure: Path, path: Path, note: str) -> Path:
    """A one-page PDF (A4 landscape): the case's numbers (TSS, category, total PI, volumes, PI% and
    score per region) above the report's PNG figure. note: a footer line (version, models)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = plt.figure(figsize=PDF_SIZE_IN)
    category = f", {report['category']}" if report.get("category") else ""
    fig.text(0.04, 0.94, f"slice2d severity report: {report.get('case', '')}", fontsize=18, weight="bold")
    lines = [f"{report['scheme']} total severity score {report['tss']} / {report['tss_max']}{category}",
             f"total PI {report['total_pi']:.1f} %: lesion {report['lesion_ml']:.0f} mL of {report['lung_ml']:.0f} mL lung",
             f"regions: {report['regions_kind']}"]
    if report.get("note"):
        lines += textwrap.wrap(report["note"], 62)
    fig.text(0.04, 0.89, "\n".join(lines), fontsize=11, va="top", linespacing=1.6)
    table = fig.add_axes((0.6, 0.64, 0.36, 0.3))
    table.axis("off")
    rows = [[name, "" if r["pi"] is None else f"{r['pi']:.1f}", str(r["score"])] for name, r in report["regions"].items()]
    cells = table.table(cellText=rows, colLabels=["region", "PI %", "score"], loc="upper center", cellLoc="center")
    cells.scale(1, 1.3)
    picture = fig.add_axes((0.02, 0.05, 0.96, 0.56))
    picture.imshow(plt.imread(figure))
    picture.axis("off")
    fig.text(0.04, 0.02, f"{note}. For research; not a diagnosis.", fontsize=8, color="dimgray")
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="pdf")
    plt.close(fig)
    return path
