"""bfloat16 against float32 inference: the maps `slice2d predict` writes with each, compared.

    python bench/precision.py            # the "precision" section of BENCHMARKS.md

Inputs: the whole real scans of bench/whole_scans.py (three NIfTI scans and the three chest DICOM
series, read by ``slice2d.dicom``), and two folders of real 8-bit slices (covid-semiseg's 50
slices, and the first 100 of covid-ct-slices). Each is predicted with the defaults twice,
``--precision float32`` and ``--precision bfloat16``; the table gives the Dice of the bfloat16
lesion and lung maps against the float32 ones (all voxels of a scan, or all pixels of a folder,
pooled) and the lesion volumes (mL; pixels for slice folders).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import nibabel as nib
import numpy as np
from PIL import Image
from record import machine, write_section
from whole_scans import DATA, materialise

ROOT = Path(__file__).resolve().parents[1]
PRECISIONS = ("float32", "bfloat16")


def dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a > 0, b > 0
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * int((a & b).sum()) / total


def slice_folders(work: Path) -> dict[str, Path]:
    """covid-semiseg's slices, and the first 100 of covid-ct-slices, each in a folder of its own."""
    folders = {}
    for name, source, count in (("covid-semiseg", DATA / "covid-semiseg" / "train" / "images", None),
                                ("covid-ct-slices (100)", DATA / "covid-ct-slices" / "images", 100)):
        folder = work / name.split()[0]
        folder.mkdir(parents=True, exist_ok=True)
        for path in sorted(source.iterdir())[:count]:
            shutil.copy(path, folder / path.name)
        folders[name] = folder
    return folders


def predict(source: Path, out: Path, precision: str) -> None:
    cmd = [sys.executable, str(ROOT / "cli.py"), "predict", str(source), "--out", str(out), "-q",
           "--precision", precision]
    subprocess.run(cmd, check=True, cwd=ROOT)


def compare_volume(outs: dict[str, Path], name: str) -> dict:
    maps = {p: {kind: np.asarray(nib.load(outs[p] / sub / name).dataobj) for kind, sub in (("lesions", "."), ("lungs", "lungs"))}
            for p in PRECISIONS}
    voxel_ml = abs(np.linalg.det(nib.load(outs["float32"] / name).affine[:3, :3])) / 1000
    return {"lesion_dice": dice(maps["float32"]["lesions"], maps["bfloat16"]["lesions"]),
            "lung_dice": dice(maps["float32"]["lungs"], maps["bfloat16"]["lungs"]),
            "lesion_float32": float((maps["float32"]["lesions"] > 0).sum() * voxel_ml),
            "lesion_bfloat16": float((maps["bfloat16"]["lesions"] > 0).sum() * voxel_ml), "unit": "mL"}


def compare_slices(outs: dict[str, Path]) -> dict:
    names = sorted(p.name for p in outs["float32"].glob("*.png"))
    read = {p: {kind: np.concatenate([np.asarray(Image.open(outs[p] / sub / n)).ravel() for n in names])
                for kind, sub in (("lesions", "."), ("lungs", "lungs"))} for p in PRECISIONS}
    return {"lesion_dice": dice(read["float32"]["lesions"], read["bfloat16"]["lesions"]),
            "lung_dice": dice(read["float32"]["lungs"], read["bfloat16"]["lungs"]),
            "lesion_float32": float((read["float32"]["lesions"] > 0).sum()),
            "lesion_bfloat16": float((read["bfloat16"]["lesions"] > 0).sum()), "unit": "pixels"}


def table(results: dict) -> str:
    rows = ["| input | lesion Dice, bfloat16 vs float32 | lung Dice | lesion float32 | lesion bfloat16 |",
            "|---|---|---|---|---|"]
    for name, r in results.items():
        rows.append(f"| {name} | {r['lesion_dice']:.4f} | {r['lung_dice']:.4f} | "
                    f"{r['lesion_float32']:.1f} {r['unit']} | {r['lesion_bfloat16']:.1f} {r['unit']} |")
    return "\n".join(rows)


def verdict(results: dict) -> str:
    worst = min(min(r["lesion_dice"], r["lung_dice"]) for r in results.values())
    if worst >= 0.999:
        return "Every map stays within Dice 0.999 of float32's."
    return ("The lesion maps do not stay within Dice 0.999 of float32's (bfloat16 moves probabilities near the "
            "threshold either way), so `slice2d predict` computes in float32 unless given `--precision "
            "bfloat16` (or `auto`: bfloat16 where the CPU has it natively), which trades this agreement for "
            "speed (\"Predict\" below).")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=None, help="keep inputs and outputs here (default: a temporary folder)")
    parser.add_argument("--no-record", action="store_true")
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="slice2d-precision-"))
    scans = work / "scans"
    if not scans.is_dir():
        scans.mkdir(parents=True)
        materialise(scans)
    results = {}
    for path in sorted(scans.glob("*.nii.gz")):
        outs = {p: work / "out" / p / "scans" for p in PRECISIONS}
        for p in PRECISIONS:
            if not (outs[p] / path.name).is_file():
                predict(path, outs[p], p)
        results[path.name.removesuffix(".nii.gz")] = compare_volume(outs, path.name)
        print(path.name, results[path.name.removesuffix(".nii.gz")], flush=True)
    for name, folder in slice_folders(work / "slices").items():
        outs = {p: work / "out" / p / folder.name for p in PRECISIONS}
        for p in PRECISIONS:
            if not outs[p].is_dir():
                predict(folder, outs[p], p)
        results[name] = compare_slices(outs)
        print(name, results[name], flush=True)
    text = f"""## bfloat16 inference against float32

`python bench/precision.py`, {__import__('datetime').date.today()}, on {machine()}.
Each input predicted with the defaults (shipped lesion and lung models, built-in lung extraction
for HU scans) twice, `--precision float32` and `--precision bfloat16`; Dice of the bfloat16 maps
against the float32 ones, all voxels of a scan (all pixels of a slice folder) pooled.

{table(results)}

Lowest lesion Dice {min(r['lesion_dice'] for r in results.values()):.3f}, lowest lung Dice
{min(r['lung_dice'] for r in results.values()):.4f}. {verdict(results)}
"""
    if not args.no_record:
        write_section("precision", text, results)
    else:
        print(text)


if __name__ == "__main__":
    main()
