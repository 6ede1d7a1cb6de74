"""How much a lesion model's accuracy depends on the sharpness of the slices it is given.

    python bench/sharpness.py runs/r19/ds2nv48-p128-fold0

Scanners and reconstruction kernels differ in sharpness, and coarse or resampled scans are
blurrier still. The run's test slices of covid-ct-slices (its ``splits.json`` "test": patients it
never trained on; ``--split val``: its validation patients, for a shipped model) are predicted as
stored, blurred by a Gaussian of a few widths, given coarser pixels (shrunk with anti-aliasing to a
half and a third of the size and grown back: pixels of about 3 and 4.5 mm, a coarse matrix or a
downsampled archive), and sharpened by an unsharp mask, each 8-bit slice changed before the model's
own preprocessing; infection Dice per slice (mean) and pooled against the slices' reference masks
(kept as they are), and the area marked over the reference area (below 1: lesion lost). The
model's threshold is its own. Nothing is recorded: the table
goes to standard output.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi
from skimage.transform import resize

import real_cv
from slice2d.predict import load_run, with_options

BLUR_SIGMAS_PX = (0.5, 0.7, 1.0)
COARSER = (2, 3)  # pixel side multiplied by
SHARPEN = (0.5, 1.5)  # unsharp mask: amount, Gaussian sigma in pixels


def blurred(image: np.ndarray, sigma: float) -> np.ndarray:
    return np.clip(ndi.gaussian_filter(image.astype(np.float32), sigma) + 0.5, 0, 255).astype(np.uint8)


def coarsened(image: np.ndarray, factor: float) -> np.ndarray:
    """The slice with pixels ``factor`` times as large: shrunk (anti-aliased) and grown back bilinearly."""
    small = resize(image.astype(np.float32), [max(1, round(n / factor)) for n in image.shape], order=1,
                   anti_aliasing=True, preserve_range=True)
    back = resize(small, image.shape, order=1, preserve_range=True)
    return np.clip(back + 0.5, 0, 255).astype(np.uint8)


def sharpened(image: np.ndarray, amount: float, sigma: float) -> np.ndarray:
    f = image.astype(np.float32)
    return np.clip(f + amount * (f - ndi.gaussian_filter(f, sigma)) + 0.5, 0, 255).astype(np.uint8)


def variants() -> dict[str, callable]:
    out = {"as stored": lambda x: x}
    out |= {f"blurred, sigma {s:g} px": (lambda x, s=s: blurred(x, s)) for s in BLUR_SIGMAS_PX}
    out |= {f"pixels {f:g} times as large": (lambda x, f=f: coarsened(x, f)) for f in COARSER}
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
    print("| slices given | infection Dice per slice | pooled | marked / reference area |\n|---|---|---|---|")
    for name, change in variants().items():
        dice, inter, total, marked, true = [], 0, 0, 0, 0
        for _, image, ref, _ in slices:
            pred = real_cv._segment([run], change(image))[0][:, :, 0] > 0
            i, t = real_cv._dice(pred, ref > 0)
            dice.append(1.0 if t == 0 else 2 * i / t)
            inter, total = inter + i, total + t
            marked, true = marked + np.count_nonzero(pred), true + np.count_nonzero(ref > 0)
        print(f"| {name} | {np.mean(dice):.3f} | {2 * inter / max(1, total):.3f} | {marked / max(1, true):.2f} |",
              flush=True)


if __name__ == "__main__":
    main()
