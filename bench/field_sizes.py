"""Lesion volume written on whole real scans reconstructed on other fields of view.

    python bench/field_sizes.py              # the shipped models: the "field-sizes" section
    python bench/field_sizes.py --no-record  # printed only

A scanner reconstructs an axial slice on the field of view the operator sets: a small field
shows the body filling the image, a large one leaves air around it. The lesion network sees 256
pixels whatever the field, so a slice that fills its canvas shows the anatomy larger when the
field is small. Each scan (copdgene-10002K at 4.2 mm pixels, cmb-crc, and the LIDC-IDRI-0001,
CPTAC C3N-00247 and RICORD 000082 DICOM series read with ``slice2d.dicom``) is predicted with
`slice2d predict` three ways: as scanned; cut in-plane to its lungs (the bounding box of the lungs
that `slice2d.lungs.extract_anatomy` finds, over all slices, with 10 mm to spare: a targeted
reconstruction of the lungs); and centred in air on a 400 mm field. Each way runs twice: with the
shipped lesion model as shipped (`data.field_mm` 350: a slice narrower than 350 mm is centred on a
350 mm canvas) and with the same model whose slices always fill the canvas (`data.field_mm` 0). The
same patient must get about the same lesion volume on every field. Only RICORD shows COVID-19: on
the others every lesion voxel is a false positive. cmb-crc, LIDC and CPTAC are the shipped lesion
model's whole-scan negatives (prepared on their own fields, filling the canvas); copdgene and
RICORD were in no training.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import yaml
from pixel_sizes import predict as lesion_ml  # lesion mL per case, from predict's cohort table
from record import machine, write_section

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
SCANS = {"copdgene-10002K-ct-64": DATA / "ct-samples" / "copdgene-10002K-ct-64.nii.gz",
         "cmb-crc-chest-ct": DATA / "ct-samples" / "cmb-crc-chest-ct.nii.gz",
         "lidc-idri-0001": DATA / "dicom" / "lidc-idri-0001",
         "cptac-c3n-00247": DATA / "dicom" / "cptac-c3n-00247",
         "ricord-1a-000082": DATA / "dicom" / "ricord-1a-000082"}
COVID = {"ricord-1a-000082"}
WAYS = ("lungs", "scan", "400")  # cut to the lungs, as scanned, centred in air on a 400 mm field
MARGIN_MM = 10.0
WIDE_MM = 400.0


def reframe(img, start: tuple[int, int], size: tuple[int, int]):
    """``img`` with its first two (in-plane) axes cut or padded with air to ``size`` pixels from
    index ``start`` (negative: air before the first pixel); the affine moves with it."""
    data = np.asarray(img.dataobj)
    out = np.full((size[0], size[1], data.shape[2]), -1024, dtype=data.dtype)
    src, dst = [], []
    for k in range(2):
        lo, hi = max(0, start[k]), min(data.shape[k], start[k] + size[k])
        src.append(slice(lo, hi))
        dst.append(slice(lo - start[k], hi - start[k]))
    out[dst[0], dst[1]] = data[src[0], src[1]]
    affine = img.affine.copy()
    affine[:3, 3] = img.affine[:3, :3] @ np.array([start[0], start[1], 0.0]) + img.affine[:3, 3]
    header = img.header.copy()
    header.set_data_dtype(data.dtype)
    return nib.Nifti1Image(out, affine, header)


def materialise(folder: Path) -> dict[str, dict[str, float]]:
    """Every scan three ways as NIfTI in ``folder``; returns each way's field of view (mm, the
    longer in-plane side)."""
    from slice2d.dicom import load_series
    from slice2d.lungs import extract_anatomy_nifti

    fields = {}
    for name, source in SCANS.items():
        img = nib.load(source) if source.is_file() else load_series(source)
        zooms = [float(z) for z in img.header.get_zooms()[:2]]
        shape = img.shape[:2]
        lungs = extract_anatomy_nifti(img)[0] > 0
        rows, cols = np.flatnonzero(lungs.any(axis=(1, 2))), np.flatnonzero(lungs.any(axis=(0, 2)))
        box = [(rows[0], rows[-1] + 1), (cols[0], cols[-1] + 1)]
        margin = [int(round(MARGIN_MM / z)) for z in zooms]
        start = [box[k][0] - margin[k] for k in range(2)]
        size = [box[k][1] - box[k][0] + 2 * margin[k] for k in range(2)]
        wide = [max(shape[k], int(round(WIDE_MM / zooms[k]))) for k in range(2)]
        versions = {"scan": img, "lungs": reframe(img, start, size),
                    "400": reframe(img, [-((wide[k] - shape[k]) // 2) for k in range(2)], wide)}
        fields[name] = {}
        for way, version in versions.items():
            nib.save(version, folder / f"{name}@{way}.nii.gz")
            fields[name][way] = max(n * z for n, z in zip(version.shape[:2], zooms, strict=True))
    return fields


def filling_copy(run: Path, dest: Path) -> Path:
    """A copy of the run whose slices always fill the canvas (``data.field_mm`` 0)."""
    shutil.copytree(run, dest)
    cfg = yaml.safe_load((dest / "config.yaml").read_text())
    cfg["data"]["field_mm"] = 0.0
    (dest / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    return dest


def table(fields: dict, ml: dict) -> str:
    md = ("| scan | field (mm): cut to the lungs / as scanned / 400 mm | lesion mL, slices filling the canvas | "
          "lesion mL, `field_mm` 350 (shipped) |\n|---|---|---|---|\n")
    for name in SCANS:
        label = f"{name}{' (COVID-19)' if name in COVID else ''}"
        cells = [" / ".join(f"{ml[setting][f'{name}@{way}']:.1f}" for way in WAYS) for setting in ("fill", "field")]
        md += (f"| {label} | " + " / ".join(f"{fields[name][way]:.0f}" for way in WAYS) + f" | {cells[0]} | "
               f"{cells[1]} |\n")
    return md


def main() -> None:
    from slice2d.runs import shipped_model

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-record", action="store_true", help="print only; leave BENCHMARKS.md alone")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args()
    if not DATA.is_dir():
        sys.exit(f"{DATA} not found; this benchmark needs the real scans")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "in").mkdir()
        fields = materialise(tmp / "in")
        start = time.perf_counter()
        filling = filling_copy(shipped_model("lesions"), tmp / "lesions-filling")
        ml = {"field": lesion_ml(tmp / "in", tmp / "out-field", []),
              "fill": lesion_ml(tmp / "in", tmp / "out-fill", ["--model", str(filling)])}
        seconds = time.perf_counter() - start
    md = table(fields, ml)
    print(md)
    result = {"fields_mm": fields, "lesion_ml": ml, "seconds": seconds}
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    if args.no_record:
        return
    text = (f"## Lesion volume against the field of view\n\n`python bench/field_sizes.py`, "
            f"{time.strftime('%Y-%m-%d')}, on {machine()}.\n{__doc__.split(chr(10) + chr(10), 2)[2].strip()}\n"
            f"Lesion mL written ({seconds:.0f} s for all):\n\n{md}")
    write_section("field-sizes", text, result)


if __name__ == "__main__":
    main()
