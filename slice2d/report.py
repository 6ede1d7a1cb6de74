"""Reports on disk, written atomically: severity reports (JSON per case, one cohort CSV) and the
figures of evaluation and severity (matplotlib, Agg backend).

matplotlib is imported inside the figure functions so that importing this module stays cheap.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from slice2d.io import Geometry, atomic_path, to_canonical, write_text
from slice2d.severity import SeverityOptions, severity_report

BOX_METRICS = ("dice", "iou", "hd95_mm", "surface_dice")
GGO_COLOUR = "#ffd900"  # bars of ground-glass (the yellow of its overlay on the slices)
CONSOLIDATION_COLOUR = "#d62728"  # bars of consolidation, or of infection where the classes are not told apart


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def metrics_boxplot(rows: Sequence[dict], path: str | Path, metrics: Sequence[str] = BOX_METRICS) -> Path:
    """Box plots (one panel per metric, one box per label name) of per-case metric rows.

    rows: dicts with ``name`` and the metric keys (as from ``metrics.evaluate_case``); NaN values
    are left out of the boxes. path: PNG file to write. Returns ``path``.
    """
    plt = _pyplot()
    names = list(dict.fromkeys(r["name"] for r in rows))
    fig, axes = plt.subplots(1, len(metrics), figsize=(3.2 * len(metrics), 3.6), squeeze=False)
    for ax, metric in zip(axes[0], metrics, strict=True):
        data = []
        for name in names:
            v = np.asarray([r[metric] for r in rows if r["name"] == name], dtype=float)
            data.append(v[np.isfinite(v)])
        ax.boxplot(data, showmeans=True)
        ax.set_xticks(range(1, len(names) + 1), names, rotation=30, ha="right")
        ax.set_title(metric)
        if metric in ("dice", "iou", "surface_dice"):
            ax.set_ylim(-0.02, 1.02)
        ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)


def severity_figure(
    image_hu: np.ndarray,
    lungs: np.ndarray,
    lesions: np.ndarray,
    affine: np.ndarray,
    report: dict,
    path: str | Path,
    regions_map: np.ndarray | None = None,
) -> Path:
    """One-page PNG: six axial slices with overlays (the scan's most superior slice, four through
    the lungs, the most inferior slice: what lies above and below the lungs shows there too), a
    bar chart of PI% per region, and the report's sanity block in one line.

    image_hu, lungs, lesions, regions_map: arrays (X, Y, Z) on the grid of ``affine`` (any
    orientation; shown in radiological display: anterior at top, patient right on the image left,
    lung window -1350..150 HU). Lungs are outlined; ``regions_map`` (lobes or zones), if given, is
    tinted; lesions are overlaid (ground-glass yellow, consolidation / infection red).
    report: a dict from ``severity.severity_report``. path: PNG to write (atomically). Returns path.
    """
    import nibabel as nib

    plt = _pyplot()
    from matplotlib.colors import ListedColormap

    geometry = Geometry(affine=np.asarray(affine, dtype=np.float64), shape=tuple(int(s) for s in lungs.shape[:3]),
                        axcodes=tuple(nib.aff2axcodes(affine)))
    # the canonical (P, L, S) grid is the radiological display: anterior at the top, the patient's
    # right on the image's left; views (flips, transposes), so only the shown slices are read
    img, lun, les = (to_canonical(np.asarray(a), geometry) for a in (image_hu, lungs, lesions))
    reg = None if regions_map is None else to_canonical(np.asarray(regions_map), geometry)
    rows_mm, cols_mm, _ = geometry.canonical_spacing
    aspect = rows_mm / cols_mm
    zs = np.flatnonzero(lun.any(axis=(0, 1)))
    if zs.size == 0:
        zs = np.arange(img.shape[2])
    inner = np.quantile(zs, [0.8, 0.6, 0.4, 0.2]).round().astype(int)
    picks = list(dict.fromkeys([img.shape[2] - 1, *inner, 0]))  # superior to inferior, each slice once

    notes = [report[key] for key in ("note", "coverage_warning", "resolution_warning") if report.get(key)]
    if report.get("sanity"):
        notes.append("checks: " + ", ".join(f"{k} {v}" for k, v in report["sanity"].items()))
    fig = plt.figure(figsize=(18, 7.5))
    # a fixed layout (tight_layout measured every label first, a third of the figure's time); the
    # bottom margin holds the bar labels and the notes, about 2 % of the height per line past two
    grid = fig.add_gridspec(2, len(picks), height_ratios=[1.15, 1], left=0.045, right=0.99, top=0.96,
                            bottom=0.07 + 0.02 * max(0, len(notes) - 2),
                            wspace=0.04, hspace=0.16)
    tint = ListedColormap(["#1f77b4", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b"])
    for k, z in enumerate(picks):
        ax = fig.add_subplot(grid[0, k])
        ax.imshow(img[:, :, z].astype(np.float32), cmap="gray", vmin=-1350, vmax=150, aspect=aspect)
        if reg is not None:
            r = reg[:, :, z].astype(float)
            ax.imshow(np.ma.masked_equal(r, 0), cmap=tint, vmin=1, vmax=6, alpha=0.25,
                      aspect=aspect, interpolation="nearest")
        for value, colour in ((1, "#00e5ff"), (2, "#00ff6a")):
            m = lun[:, :, z] == value
            if m.any() and not m.all():
                ax.contour(m, levels=[0.5], colors=colour, linewidths=0.8)
        l2 = les[:, :, z]
        overlay = np.zeros(l2.shape + (4,))
        overlay[l2 == 1] = (1.0, 0.85, 0.0, 0.55) if report.get("lesion_classes") == 2 else (1.0, 0.1, 0.1, 0.55)
        overlay[l2 == 2] = (1.0, 0.1, 0.1, 0.6)
        ax.imshow(overlay, aspect=aspect, interpolation="nearest")
        where = " (top of scan)" if z == img.shape[2] - 1 else " (bottom of scan)" if z == 0 else ""
        ax.set_title(f"axial slice {z}{where}", fontsize=9)
        ax.axis("off")

    ax = fig.add_subplot(grid[1, :])
    names = list(report["regions"])
    if report.get("lesion_classes") == 2:  # ground-glass below, consolidation stacked on it
        ggo = [_pi_or_zero(report["regions"][n].get("ggo_pi")) for n in names]
        con = [_pi_or_zero(report["regions"][n].get("consolidation_pi")) for n in names]
        ax.bar(names, ggo, color=GGO_COLOUR, label="ground-glass")
        bars = ax.bar(names, con, bottom=ggo, color=CONSOLIDATION_COLOUR, label="consolidation")
        ax.legend(loc="upper right", fontsize=8, frameon=False)
    else:
        bars = ax.bar(names, [_pi_or_zero(report["regions"][n]["pi"]) for n in names], color=CONSOLIDATION_COLOUR)
    for bar, name in zip(bars, names, strict=True):
        ax.annotate(f"score {report['regions'][name]['score']}", (bar.get_x() + bar.get_width() / 2, bar.get_y() + bar.get_height()),
                    ha="center", va="bottom", fontsize=9, xytext=(0, 2), textcoords="offset points")
    for edge in report.get("cut_points_percent", []):
        ax.axhline(edge, color="grey", lw=0.6, ls="--")
    ax.set_ylim(0, 105)
    ax.set_ylabel("PI % (lesion / region volume)")
    category = f", {report['category']}" if report.get("category") else ""
    case = f"{report['case']}: " if report.get("case") else ""
    split = (f" (ground-glass {report['ggo_ml']:.0f}, consolidation {report['consolidation_ml']:.0f})"
             if report.get("lesion_classes") == 2 else "")
    ax.set_title(f"{case}{report['scheme']} TSS {report['tss']}/{report['tss_max']}{category}; "
                 f"total PI {report['total_pi']:.1f} %, lesion {report['lesion_ml']:.0f} mL{split} of "
                 f"{report['lung_ml']:.0f} mL lung")
    if notes:
        fig.text(0.01, 0.005, "\n".join(notes), fontsize=8, color="dimgray")
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=90)
    plt.close(fig)
    return Path(path)


def _pi_or_zero(p) -> float:
    """A region's PI% for the bar chart: 0 where the region has no voxels (PI null or NaN)."""
    return 0.0 if p is None or (isinstance(p, float) and np.isnan(p)) else float(p)


def _json_ready(obj):
    if isinstance(obj, dict):
        return {k: _json_ready(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_ready(v) for v in obj]
    if isinstance(obj, (float, np.floating)):
        return None if math.isnan(obj) else float(obj)
    if isinstance(obj, np.integer):
        return int(obj)
    return obj


def write_report(report: dict, path: str | Path) -> Path:
    """Write one severity report as JSON (NaN as null), atomically. Returns ``path``."""
    return write_text(path, json.dumps(_json_ready(report), indent=2, allow_nan=False) + "\n")


def write_cohort_csv(reports: Sequence[dict], path: str | Path) -> Path:
    """One row per case: case, scheme, total_pi, tss, tss_max, category, lung_ml, lesion_ml (and
    ggo_ml, consolidation_ml, ggo_pi, consolidation_pi where a report tells the two), then
    ``<region>_pi`` and ``<region>_score`` for every region met (in order of first appearance),
    then the sanity block's entries (``anatomy.sanity``) where reports have one.
    Empty cells for NaN/None and for regions a case does not have. Written atomically."""
    path = Path(path)
    head = ["case", "scheme", "total_pi", "tss", "tss_max", "category", "lung_ml", "lesion_ml"]
    if any("ggo_ml" in r for r in reports):  # ground-glass and consolidation maps
        head += ["ggo_ml", "consolidation_ml", "ggo_pi", "consolidation_pi"]
    region_names = list(dict.fromkeys(name for r in reports for name in r["regions"]))
    fields = head + [f"{n}_{k}" for n in region_names for k in ("pi", "score")]
    checks = list(dict.fromkeys(k for r in reports for k in r.get("sanity", {})))  # the sanity block's keys
    fields += checks

    def cell(v):
        if v is None or (isinstance(v, float) and math.isnan(v)):
            return ""
        return repr(float(v)) if isinstance(v, (float, np.floating)) else str(v)

    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(fields)
            for r in reports:
                row = [cell(r.get(k)) for k in head]
                for n in region_names:
                    reg = r["regions"].get(n, {})
                    row += [cell(reg.get("pi")), cell(reg.get("score"))]
                row += [cell(r.get("sanity", {}).get(k)) for k in checks]
                w.writerow(row)
    return path


def score_case(image: np.ndarray | None, lesions: np.ndarray, lungs: np.ndarray | None, lobes: np.ndarray | None,
               affine: np.ndarray, case: str, options: SeverityOptions, json_path: Path,
               checks: dict | None = None, lesion_classes: int | None = None) -> dict:
    """Score one case (``case_report``), write the report to ``json_path`` and its figure beside it
    (``write_case_report``); returns the report."""
    report = case_report(lesions, lungs, lobes, affine, case, options, checks, lesion_classes)
    write_case_report(report, image, lesions, lungs, lobes, affine, json_path)
    return report


def case_report(lesions: np.ndarray, lungs: np.ndarray | None, lobes: np.ndarray | None, affine: np.ndarray,
                case: str, options: SeverityOptions, checks: dict | None = None,
                lesion_classes: int | None = None) -> dict:
    """The severity report of one case (``severity.severity_report``), nothing written; raises
    ``severity.MapError`` for maps that cannot be scored. checks: the sanity block
    (``anatomy.sanity``), stored under ``"sanity"``. lesion_classes: as ``severity_report`` takes it."""
    report = severity_report(lesions, lungs, affine, lobes=lobes, scheme=str(options.scheme),
                             lobe_labels=str(options.lobe_labels), case=case, zone_method=options.zones.method,
                             zone_joint=options.zones.joint, lesion_classes=lesion_classes)
    if checks is not None:
        report["sanity"] = checks
        if warning := coverage_warning(checks, zones=lobes is None):
            report["coverage_warning"] = warning
        if warning := resolution_warning(checks):
            report["resolution_warning"] = warning
    return report


# The shipped lesion model learned from 256x256 slice exports and from whole scans as scanned and at
# 1.6 and 2.4 mm pixels. On coarser pixels it finds less of the lesion (a
# COVID-19 scan resampled to 2.5 mm pixels: about a quarter less; to 5 mm pixels and slices: more
# than half of it missed) and can still mark blurred vessels (a normal scan of 4.2 mm pixels: 8 mL); BENCHMARKS.md,
# "Whole real scans" and "Lesion volume against pixel size".
COARSE_PIXEL_MM = 2.0


def resolution_warning(checks: dict) -> str | None:
    """What pixels coarser than ``COARSE_PIXEL_MM`` mean for the lesion map (``None`` otherwise):
    faint lesion blurs into the lung around it, and vessels into soft shapes that look like it."""
    pixel = checks.get("pixel_mm")
    if pixel is None or pixel <= COARSE_PIXEL_MM:
        return None
    return (f"in-plane pixels of {pixel:g} mm: on pixels coarser than {COARSE_PIXEL_MM:g} mm the lesion model finds "
            "less of the lesion than on finer ones, and blurred vessels can be marked as lesion; check the lesion "
            "map by eye")


def coverage_warning(checks: dict, zones: bool) -> str | None:
    """What a scan that stops short of the lung apices or bases means for its report (``None`` when
    it covers both): PI% and the score describe only the lung inside the scan, and lung zones are
    thirds of that part, not of the whole lungs."""
    short = [end for end, key in (("apices", "reaches_apex"), ("bases", "reaches_bases")) if checks.get(key) is False]
    if not short:
        return None
    return (f"the scan stops short of the lung {' and '.join(short)}: PI% and the score cover only the lung inside "
            "the scan" + ("; the zones are thirds of that part, not of the whole lungs" if zones else ""))


def write_case_report(report: dict, image: np.ndarray | None, lesions: np.ndarray, lungs: np.ndarray | None,
                      lobes: np.ndarray | None, affine: np.ndarray, json_path: Path) -> None:
    """Write a case's figure (``json_path`` with ``.png``), then its report to ``json_path``: the
    JSON comes last, so that its presence means the case's files are all written."""
    background = image if image is not None else np.full(lesions.shape, -1000.0, np.float32)
    severity_figure(background, lungs if lungs is not None else (lobes > 0).astype(np.uint8), lesions, affine,
                    report, json_path.with_suffix(".png"), regions_map=lobes)
    write_report(report, json_path)
