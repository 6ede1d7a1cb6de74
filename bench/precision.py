"""Two ways of computing the same inference, compared by the maps `slice2d predict` writes.

    python bench/precision.py                    # bfloat16 against float32: section "precision"
    python bench/precision.py --compare kernels  # oneDNN against TensorFlow's own CPU kernels: "kernels"

Inputs: the whole real scans of bench/whole_scans.py (three NIfTI scans and the three chest DICOM
series, read by ``slice2d.dicom``), and two folders of real 8-bit slices (covid-semiseg's 50
slices, and the first 100 of covid-ct-slices). Each is predicted with the defaults twice: with
``--precision float32`` and ``--precision bfloat16``, or (``--compare kernels``) in float32 with
TensorFlow's oneDNN CPU kernels off and on (``TF_ENABLE_ONEDNN_OPTS`` 0 and 1, see
``slice2d.hardware.prefer_onednn``). The table gives the Dice of the second way's lesion and lung
maps against the first's (all voxels of a scan, or all pixels of a folder, pooled) and the lesion
volumes (mL; pixels for slice folders).
"""

from __future__ import annotations

import argparse
import os
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
# per comparison: (key, label, environment, predict options) of the reference way, then the other
COMPARISONS = {
    "precision": (("float32", "float32", {}, ["--precision", "float32"]),
                  ("bfloat16", "bfloat16", {}, ["--precision", "bfloat16"])),
    "kernels": (("eigen", "TensorFlow's own kernels", {"TF_ENABLE_ONEDNN_OPTS": "0"}, ["--precision", "float32"]),
                ("onednn", "oneDNN", {"TF_ENABLE_ONEDNN_OPTS": "1"}, ["--precision", "float32"])),
}


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


def predict(source: Path, out: Path, way: tuple) -> None:
    _, _, env, options = way
    cmd = [sys.executable, str(ROOT / "cli.py"), "predict", str(source), "--out", str(out), "-q", *options]
    subprocess.run(cmd, check=True, cwd=ROOT, env={**os.environ, **env})


def _result(maps: dict, ways: tuple, scale: float, unit: str) -> dict:
    """Dice of the second way's maps against the first's, and both lesion sizes."""
    first, second = (w[0] for w in ways)
    return {"lesion_dice": dice(maps[first]["lesions"], maps[second]["lesions"]),
            "lung_dice": dice(maps[first]["lungs"], maps[second]["lungs"]),
            f"lesion_{first}": float((maps[first]["lesions"] > 0).sum() * scale),
            f"lesion_{second}": float((maps[second]["lesions"] > 0).sum() * scale), "unit": unit}


def compare_volume(outs: dict[str, Path], name: str, ways: tuple) -> dict:
    maps = {w[0]: {kind: np.asarray(nib.load(outs[w[0]] / sub / name).dataobj)
                   for kind, sub in (("lesions", "."), ("lungs", "lungs"))} for w in ways}
    voxel_ml = abs(np.linalg.det(nib.load(outs[ways[0][0]] / name).affine[:3, :3])) / 1000
    return _result(maps, ways, voxel_ml, "mL")


def compare_slices(outs: dict[str, Path], ways: tuple) -> dict:
    names = sorted(p.name for p in outs[ways[0][0]].glob("*.png"))
    maps = {w[0]: {kind: np.concatenate([np.asarray(Image.open(outs[w[0]] / sub / n)).ravel() for n in names])
                   for kind, sub in (("lesions", "."), ("lungs", "lungs"))} for w in ways}
    return _result(maps, ways, 1.0, "pixels")


def table(results: dict, ways: tuple) -> str:
    (first, first_label, *_), (second, second_label, *_) = ways
    rows = [f"| input | lesion Dice, {second_label} vs {first_label} | lung Dice | lesion {first_label} | "
            f"lesion {second_label} |", "|---|---|---|---|---|"]
    for name, r in results.items():
        rows.append(f"| {name} | {r['lesion_dice']:.4f} | {r['lung_dice']:.4f} | "
                    f"{r[f'lesion_{first}']:.1f} {r['unit']} | {r[f'lesion_{second}']:.1f} {r['unit']} |")
    return "\n".join(rows)


def verdict(results: dict, compare: str) -> str:
    worst = min(min(r["lesion_dice"], r["lung_dice"]) for r in results.values())
    if compare == "kernels":
        return ("Every map stays within Dice 0.999 of those of TensorFlow's own kernels." if worst >= 0.999 else
                "Not every map stays within Dice 0.999 of those of TensorFlow's own kernels.")
    if worst >= 0.999:
        return "Every map stays within Dice 0.999 of float32's."
    return ("The lesion maps do not stay within Dice 0.999 of float32's (bfloat16 moves probabilities near the "
            "threshold either way), so `slice2d predict` computes in float32 unless given `--precision "
            "bfloat16` (or `auto`: bfloat16 where the CPU has it natively), which trades this agreement for "
            "speed (\"Predict\" below).")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--compare", choices=sorted(COMPARISONS), default="precision")
    parser.add_argument("--work", type=Path, default=None, help="keep inputs and outputs here (default: a temporary folder)")
    parser.add_argument("--no-record", action="store_true")
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="slice2d-precision-"))
    scans = work / "scans"
    if not scans.is_dir():
        scans.mkdir(parents=True)
        materialise(scans)
    ways = COMPARISONS[args.compare]
    results = {}
    for path in sorted(scans.glob("*.nii.gz")):
        outs = {w[0]: work / "out" / w[0] / "scans" for w in ways}
        for w in ways:
            if not (outs[w[0]] / path.name).is_file():
                predict(path, outs[w[0]], w)
        results[path.name.removesuffix(".nii.gz")] = compare_volume(outs, path.name, ways)
        print(path.name, results[path.name.removesuffix(".nii.gz")], flush=True)
    for name, folder in slice_folders(work / "slices").items():
        outs = {w[0]: work / "out" / w[0] / folder.name for w in ways}
        for w in ways:
            if not outs[w[0]].is_dir():
                predict(folder, outs[w[0]], w)
        results[name] = compare_slices(outs, ways)
        print(name, results[name], flush=True)
    lowest = (f"Lowest lesion Dice {min(r['lesion_dice'] for r in results.values()):.3f}, lowest lung Dice "
              f"{min(r['lung_dice'] for r in results.values()):.4f}. {verdict(results, args.compare)}")
    if args.compare == "precision":
        text = f"""## bfloat16 inference against float32

`python bench/precision.py`, {__import__('datetime').date.today()}, on {machine()}.
Each input predicted with the defaults (shipped lesion and lung models, built-in lung extraction
for HU scans) twice, `--precision float32` and `--precision bfloat16`; Dice of the bfloat16 maps
against the float32 ones, all voxels of a scan (all pixels of a slice folder) pooled.

{table(results, ways)}

{lowest}
"""
    else:
        text = f"""## oneDNN kernels against TensorFlow's own, float32

`python bench/precision.py --compare kernels`, {__import__('datetime').date.today()}, on {machine()}.
Each input predicted with the defaults in float32 twice, with TensorFlow's oneDNN CPU kernels off
(`TF_ENABLE_ONEDNN_OPTS=0`) and on (`=1`, what `slice2d.hardware.prefer_onednn` asks for on any
CPU with AVX2); Dice of the oneDNN maps against the others, all voxels of a scan (all pixels of a
slice folder) pooled.

{table(results, ways)}

{lowest}
"""
    if not args.no_record:
        write_section(args.compare, text, results)
    else:
        print(text)


if __name__ == "__main__":
    main()
