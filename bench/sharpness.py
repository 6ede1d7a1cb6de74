"""How much a lesion model's accuracy depends on the sharpness of the slices it is given.

    python bench/sharpness.py runs/r19/ds2nv48-p128-fold0

Scanners and reconstruction kernels differ in sharpness, and coarse or resampled scans are
blurrier still. The run's test slices of covid-ct-slices (its ``splits.json`` "test": patients it
never trained on; ``--split val``: its validation patients, for a shipped model) are predicted as
stored, blurred by a Gaussian of a few widths, and sharpened by an unsharp mask, each 8-bit slice
changed before the model's own preprocessing; infection Dice per slice (mean) and pooled, against
the slices' reference masks. The model's threshold is its own. Nothing is recorded: the table
goes to standard output.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

import real_cv
from slice2d.predict import load_run, with_options

BLUR_SIGMAS_PX = (0.5, 0.7, 1.0)
SHARPEN = (0.5, 1.5)  # unsharp mask: amount, Gaussian sigma in pixels


def blurred(image: np.ndarray, sigma: float) -> np.ndarray:
    return np.clip(ndi.gaussian_filter(image.astype(np.float32), sigma) + 0.5, 0, 255).astype(np.uint8)


def sharpened(image: np.ndarray, amount: float, sigma: float) -> np.ndarray:
    f = image.astype(np.float32)
    return np.clip(f + amount * (f - ndi.gaussian_filter(f, sigma)) + 0.5, 0, 255).astype(np.uint8)


def variants() -> dict[str, callable]:
    out = {"as stored": lambda x: x}
    out |= {f"blurred, sigma {s:g} px": (lambda x, s=s: blurred(x, s)) for s in BLUR_SIGMAS_PX}
    out[f"sharpened (unsharp mask {SHARPEN[0]:g}, sigma {SHARPEN[1]:g} px)"] = lambda x: sharpened(x, *SHARPEN)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="a lesion run folder of bench/real_cv.py (its splits.json names the test cases)")
    parser.add_argument("--out", type=Path, default=Path("runs/r19"), help="where real_cv.py keeps the prepared slice files")
    parser.add_argument("--split", choices=["test", "val"], default="test",
                        help="the run's cases to score: its test fold, or its validation cases (a shipped model has no test fold)")
    args = parser.parse_args()
    run = with_options(load_run(args.run))
    test = set(json.loads((args.run / "splits.json").read_text())[args.split])
    path = real_cv.slice_files("lesions", args.out, run.cfg.data.size)["covid-ct-slices"]
    slices = list(real_cv._labelled_slices(path, test))
    print(f"{args.run}: {len(slices)} {args.split} slices of covid-ct-slices\n")
    print("| slices given | infection Dice per slice | pooled |\n|---|---|---|")
    for name, change in variants().items():
        dice, inter, total = [], 0, 0
        for _, image, ref, _ in slices:
            pred = real_cv._segment([run], change(image))[0][:, :, 0] > 0
            i, t = real_cv._dice(pred, ref > 0)
            dice.append(1.0 if t == 0 else 2 * i / t)
            inter, total = inter + i, total + t
        print(f"| {name} | {np.mean(dice):.3f} | {2 * inter / max(1, total):.3f} |", flush=True)


if __name__ == "__main__":
    main()
