"""Lesion models trained once (`bench/real_cv.py --final`) scored on their validation patients.

    python bench/validation_scores.py checkpoints/lesions runs/r19/lesions-ds48-wsm-all

A model to ship trains on every patient but a validation split, so it has no test fold; models that
share that split (the same ``splits.json`` "val") can still be compared on it, slice by slice, as
``bench/real_cv.py`` scores a test fold (``evaluate_fold``: per-slice mean and pooled Dice per data
set, pooled Dice per patient), and beside MiniSeg's out-of-fold maps of the same covid-ct-slices
patients (``bench/versus_miniseg.py --partial``). These are no held-out scores: each model's
threshold was chosen on these patients and its training watched them. Maps go to
``--out``/<run name>/; the tables to standard output.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import real_cv
import versus_miniseg

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", type=Path, nargs="+", help="run folders of lesion models (binary, 256x256)")
    parser.add_argument("--slices", type=Path, default=ROOT / "runs" / "r19",
                        help="where bench/real_cv.py keeps (or makes) its prepared slice files")
    parser.add_argument("--out", type=Path, default=Path("/tmp/slice2d-validation-scores"), help="maps go here")
    args = parser.parse_args()
    files = real_cv.slice_files("lesions", args.slices, 256)
    splits = [json.loads((run / "splits.json").read_text())["val"] for run in args.runs]
    if any(sorted(s) != sorted(splits[0]) for s in splits):
        parser.error("these runs do not share one validation split: their scores would not compare")
    for run in args.runs:
        maps = args.out / run.name
        result = real_cv.evaluate_fold(run, files, maps=maps, cases=set(splits[0]))
        print(f"\n{run}:")
        for set_name, classes in result.items():
            for cls, m in classes.items():
                patients = ", ".join(f"{p} {d:.3f}" for p, d in m["dice_by_patient"].items()) if set_name == "covid-ct-slices" else ""
                print(f"  {set_name} {cls}: {m['n_slices']} slices, per-slice Dice {m['dice_mean']:.3f}, "
                      f"pooled {m['dice_pooled']:.3f}{f' ({patients})' if patients else ''}")
        versus_miniseg.main([str(maps / "covid-ct-slices"), "--partial"])


if __name__ == "__main__":
    main()
