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
model's threshold is its own. ``--zoom-to-lungs`` adds a row with each test patient's slices
zoomed (bilinear, about the centre) so that the patient's widest lung (the reference lung masks,
left to right, on any slice) spans the median of the training patients' widest lungs, the map
brought back to the slice: whether a patient's scale, rather than its texture, is what the model
misses. ``--upright`` for runs of ``real_cv.py --upright``. Nothing is recorded: the table goes to
standard output.
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import cv2
import numpy as np
from scipy import ndimage as ndi
from skimage.transform import resize

import real_cv
from slice2d.predict import load_run, with_options
from versus_miniseg import SLICES, widest_lungs

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


def zoomed_prediction(segment, image: np.ndarray, factor: float) -> np.ndarray:
    """``segment``'s label map (H, W) of ``image`` zoomed by ``factor`` about its centre (bilinear,
    8-bit again), brought back to the slice's own pixels (nearest)."""
    h, w = image.shape
    matrix = cv2.getRotationMatrix2D((w / 2 - 0.5, h / 2 - 0.5), 0, factor)
    zoomed = cv2.warpAffine(image.astype(np.float32), matrix, (w, h), flags=cv2.INTER_LINEAR,
                            borderValue=float(image.min()))
    labels = segment(np.clip(zoomed + 0.5, 0, 255).astype(np.uint8))
    return cv2.warpAffine(labels.astype(np.uint8), matrix, (w, h), flags=cv2.INTER_NEAREST | cv2.WARP_INVERSE_MAP)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="a lesion run folder of bench/real_cv.py (its splits.json names the test cases)")
    parser.add_argument("--out", type=Path, default=Path("runs/r19"), help="where real_cv.py keeps the prepared slice files")
    parser.add_argument("--split", choices=["test", "val"], default="test",
                        help="the run's cases to score: its test fold, or its validation cases (a shipped model has no test fold)")
    parser.add_argument("--upright", action="store_true", help="the slice files of real_cv.py --upright (each patient turned upright)")
    parser.add_argument("--zoom-to-lungs", action="store_true",
                        help="also zoom each test patient's slices to the training patients' median lung width")
    args = parser.parse_args()
    run = with_options(load_run(args.run))
    splits = json.loads((args.run / "splits.json").read_text())
    test = set(splits[args.split])
    path = real_cv.slice_files("lesions", args.out, run.cfg.data.size, upright=args.upright)["covid-ct-slices"]
    slices = list(real_cv._labelled_slices(path, test))
    print(f"{args.run}: {len(slices)} {args.split} slices of covid-ct-slices\n")
    changes = {name: (lambda run, image, patient, change=change: real_cv._segment([run], change(image))[0][:, :, 0])
               for name, change in variants().items()}
    if args.zoom_to_lungs:
        with open(SLICES / "cases.csv") as f:
            patient_of = {row["slice"]: row["case"] for row in csv.DictReader(f)}
        widths = widest_lungs()
        trained = {patient_of[f"{c}.png"] for c in splits["train"] if f"{c}.png" in patient_of}
        target = float(np.median([widths[p] for p in trained]))
        factors = {p: target / widths[p] for p in {p for p, *_ in slices}}
        print("zoom: " + ", ".join(f"{p} {f:.3f}" for p, f in sorted(factors.items())) + f" (to {target:g} px)\n")
        changes["zoomed: the widest lung to the training patients' median"] = (
            lambda run, image, patient: zoomed_prediction(lambda x: real_cv._segment([run], x)[0][:, :, 0], image,
                                                          factors[patient]))
    print("| slices given | infection Dice per slice | pooled | marked / reference area |\n|---|---|---|---|")
    for name, predict in changes.items():
        dice, inter, total, marked, true = [], 0, 0, 0, 0
        for patient, image, ref, _ in slices:
            pred = predict(run, image, patient) > 0
            i, t = real_cv._dice(pred, ref > 0)
            dice.append(1.0 if t == 0 else 2 * i / t)
            inter, total = inter + i, total + t
            marked, true = marked + np.count_nonzero(pred), true + np.count_nonzero(ref > 0)
        print(f"| {name} | {np.mean(dice):.3f} | {2 * inter / max(1, total):.3f} | {marked / max(1, true):.2f} |",
              flush=True)


if __name__ == "__main__":
    main()
