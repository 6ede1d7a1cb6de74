"""Lesion volume written on whole real scans resampled to coarser in-plane pixels.

    python bench/pixel_sizes.py                          # the shipped models: the "pixel-sizes" section
    python bench/pixel_sizes.py --no-record --model RUN  # another lesion model, printed only

The same patient scanned on another scanner, or reconstructed on a smaller matrix, comes with
other pixels: a lesion model must write about the same lesion volume on it. Each scan (cmb-crc,
and the LIDC-IDRI-0001, CPTAC C3N-00247 and RICORD 000082 DICOM series read with
``slice2d.dicom``) is resampled to square in-plane pixels of 1.5, 2, 2.5, 3 and 4 mm on its own slices
(``whole_scan_material.coarse_copy``: each new pixel the anti-aliased average of what it covers)
and predicted with `slice2d predict`. Only RICORD shows COVID-19: on the others every lesion voxel
is a false positive, and a model whose false lesion grows as the pixels grow has learned the
scans it was shown more than what a lesion is. cmb-crc, LIDC and CPTAC are the shipped lesion
model's whole-scan negatives (as scanned, and at 1.6 and 2.4 mm pixels with 5 mm slices): their
rows are the same patients seen through other reconstructions, not held-out scans.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import tempfile
import time
from pathlib import Path

import nibabel as nib
from record import machine, write_section
from whole_scan_material import coarse_copy
from whole_scans import run_predict

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
SCANS = {"cmb-crc-chest-ct": DATA / "ct-samples" / "cmb-crc-chest-ct.nii.gz",
         "lidc-idri-0001": DATA / "dicom" / "lidc-idri-0001",
         "cptac-c3n-00247": DATA / "dicom" / "cptac-c3n-00247",
         "ricord-1a-000082": DATA / "dicom" / "ricord-1a-000082"}
COVID = {"ricord-1a-000082"}
PIXELS_MM = (1.5, 2.0, 2.5, 3.0, 4.0)


def materialise(folder: Path) -> dict[str, float]:
    """Every scan as scanned and at each of ``PIXELS_MM``, as NIfTI in ``folder``; returns each
    scan's own pixel size."""
    from slice2d.dicom import load_series

    own = {}
    for name, source in SCANS.items():
        img = nib.load(source) if source.is_file() else load_series(source)
        own[name] = float(img.header.get_zooms()[0])
        nib.save(img, folder / f"{name}@scan.nii.gz")
        for mm in PIXELS_MM:
            nib.save(coarse_copy(img, (mm, mm, None)), folder / f"{name}@{mm:g}.nii.gz")
    return own


def predict(inputs: Path, out: Path, extra: list[str]) -> dict[str, float]:
    """Lesion mL per case, from the cohort table of `slice2d predict` (run as whole_scans.py runs it)."""
    run_predict(ROOT, inputs, out, extra)
    table = out / "severity" / "cohort.csv"
    if not table.is_file():
        sys.exit(f"slice2d predict wrote no {table}")
    with open(table, newline="") as f:
        return {row["case"]: float(row["lesion_ml"]) for row in csv.DictReader(f)}


def table(own: dict[str, float], ml: dict[str, float]) -> str:
    head = "| scan (own pixels) | as scanned | " + " | ".join(f"{mm:g} mm" for mm in PIXELS_MM) + " |\n"
    md = head + "|---" * (len(PIXELS_MM) + 2) + "|\n"
    for name in SCANS:
        label = f"{name} ({own[name]:.2f} mm){' (COVID-19)' if name in COVID else ''}"
        cells = [ml[f"{name}@scan"], *(ml[f"{name}@{mm:g}"] for mm in PIXELS_MM)]
        md += f"| {label} | " + " | ".join(f"{v:.1f}" for v in cells) + " |\n"
    return md


def _run(extra: list[str]) -> tuple[dict, dict, float]:
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "in").mkdir()
        own = materialise(tmp / "in")
        start = time.perf_counter()
        ml = predict(tmp / "in", tmp / "out", extra)
        return own, ml, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-record", action="store_true", help="print only; leave BENCHMARKS.md alone")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    parser.add_argument("--recorded", type=Path, default=None,
                        help="results JSON (--json) of a run already made with this checkout: record it without predicting")
    args, extra = parser.parse_known_args()  # the rest goes to `slice2d predict` (e.g. --model RUN)
    if args.recorded:
        done = json.loads(args.recorded.read_text())
        own, ml, seconds, extra = done["own_pixels_mm"], done["lesion_ml"], done["seconds"], done["args"]
    elif not DATA.is_dir():
        sys.exit(f"{DATA} not found; this benchmark needs the real scans")
    else:
        own, ml, seconds = _run(extra)
    md = table(own, ml)
    print(md)
    if args.json:
        args.json.write_text(json.dumps({"own_pixels_mm": own, "lesion_ml": ml, "seconds": seconds, "args": extra},
                                        indent=1))
    if args.no_record:
        return
    text = (f"## Lesion volume against pixel size\n\n`python bench/pixel_sizes.py"
            f"{' ' + ' '.join(extra) if extra else ''}`, {time.strftime('%Y-%m-%d')}, on {machine()}.\n"
            f"{__doc__.split(chr(10) + chr(10), 2)[2].strip()}\nLesion mL written ({seconds:.0f} s for all):\n\n{md}")
    write_section("pixel-sizes", text, {"own_pixels_mm": own, "lesion_ml": ml, "seconds": seconds, "args": extra})


if __name__ == "__main__":
    main()
