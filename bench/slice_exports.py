"""Slice exports predicted as they are stored: orientation found by `predict`, or given by hand.

    python bench/slice_exports.py     (writes the "slice-exports" section of BENCHMARKS.md)

covid-semiseg's 50 MedSeg slices are stored transposed (a quarter turn and a mirror away from the
radiological convention). Each is predicted by the slice-folder pipeline of `slice2d predict`
with the shipped lesion and lung models three ways: with the orientation detected (the default),
with the right correction given (`--rotate 3 --mirror`), and read as stored (`--rotate 0`), and
the written lesion masks (in the stored orientation) are scored against the reference masks
(mean per-slice Dice of infection, ground-glass and consolidation merged). Most of the slices
were in the lesion model's training data: the figures compare orientations, not generalisation.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from record import machine, write_section

ROOT = Path(__file__).resolve().parents[1]

DATA = ROOT.parent / "shared" / "data" / "covid-semiseg" / "train"


def dice(a: np.ndarray, b: np.ndarray) -> float:
    total = np.count_nonzero(a) + np.count_nonzero(b)
    return 1.0 if total == 0 else 2 * np.count_nonzero(a & b) / total


def main() -> None:
    from PIL import Image

    from slice2d.orientation import Orientation
    from slice2d.pipeline import PredictOptions, segment
    from slice2d.runs import shipped_model, unseen_cases

    if not DATA.is_dir():
        sys.exit(f"{DATA} not found; this benchmark needs the real slices")
    ways = {"detected (default)": None, "`--rotate 3 --mirror` (the right correction)": Orientation(3, True),
            "`--rotate 0` (as stored)": Orientation(0, False)}
    rows = []
    for label, rotate in ways.items():
        with tempfile.TemporaryDirectory() as tmp:
            segment(DATA / "images", Path(tmp), options=PredictOptions(rotate=rotate))  # the shipped models
            scores = []
            for mask in sorted((DATA / "masks").glob("*.png")):
                ref = np.asarray(Image.open(mask)) > 0
                pred = np.asarray(Image.open(Path(tmp) / mask.name)) > 0
                scores.append(dice(pred, ref))
        rows.append(f"| {label} | {np.mean(scores):.3f} |")
        print(rows[-1])
    names = {p.stem for p in (DATA / "masks").glob("*.png")}
    unseen = len(names & set(unseen_cases(shipped_model("lesions"))))
    write_section("slice-exports", f"""## Slice exports predicted as stored

`python bench/slice_exports.py`, {time.strftime('%Y-%m-%d')}, on {machine()}: covid-semiseg's 50 slices (stored transposed)
through `slice2d predict`'s slice-folder pipeline with the shipped lesion and lung models;
written lesion masks, in the stored orientation, against the reference (mean per-slice Dice of
infection). {len(names) - unseen} of these slices were in the shipped lesion model's training data, {unseen}
it never saw: the rows compare orientations.

| orientation | lesion Dice per slice |
|---|---|
""" + "\n".join(rows) + "\n", {"machine": machine(), "rows": rows})


if __name__ == "__main__":
    main()
