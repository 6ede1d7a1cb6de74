"""Ground-glass and consolidation by density (slice2d.lesion_classes), cross-validated on covid-semiseg.

    python bench/lesion_classes.py --maps runs/r19/ds2nv-p128-cv-calibrated-maps/covid-semiseg \\
        --splits 'runs/r19/ds2nv-p128-fold{fold}/splits.json' --recipe "deep supervision, every patient"

covid-semiseg's 50 labelled slices tell ground-glass (1) from consolidation (2). For each fold of a
5-fold lesion cross-validation (``bench/real_cv.py lesions --folds 5``: ``--maps`` its out-of-fold
binary maps of covid-semiseg, ``--splits`` its folds' splits.json), the consolidation fraction of
``split_classes`` and the smoothing of the density before it is thresholded are chosen on the
other folds' slices, applied to their true infection masks (the pair with the best mean of the
two classes' per-slice Dice), then used to split the test fold's out-of-fold map. Lungs come from the shipped lung model on each slice, as `slice2d
predict` finds them for slice images. Scored like ``real_cv.py``: per-slice Dice per class (1.0
where prediction and reference are both empty) and pooled Dice, beside the same rule on the true
infection masks (the best the rule can do given the infection).
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from record import machine, write_section  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SEMISEG = ROOT.parent / "shared" / "data" / "covid-semiseg" / "train"
FRACTIONS = tuple(np.round(np.arange(0.30, 0.801, 0.05), 2))
SMOOTHING_MM = (0.0, 1.0, 1.5, 2.0)  # Gaussian sigma of the density before the threshold (1 mm pixels assumed)
ROTATE = 1  # MedSeg slices are stored a quarter turn from upright (bench/real_cv.py)


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    total = np.count_nonzero(a) + np.count_nonzero(b)
    return 1.0 if total == 0 else 2 * np.count_nonzero(a & b) / total


def scores(pred: np.ndarray, ref: np.ndarray) -> dict:
    """Per class (1, 2, and "infection": their union): (per-slice Dice, intersection, sum of sizes)."""
    out = {}
    for c in (1, 2, "infection"):
        a, b = (pred > 0, ref > 0) if c == "infection" else (pred == c, ref == c)
        out[c] = (_dice(a, b), int(np.count_nonzero(a & b)), int(np.count_nonzero(a) + np.count_nonzero(b)))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--maps", type=Path, required=True, help="out-of-fold binary maps of covid-semiseg (0/255)")
    parser.add_argument("--splits", required=True, help="each fold's splits.json, {fold} for its number")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--recipe", default="", help="what made the maps, for the table")
    parser.add_argument("--no-record", action="store_true", help="print only; leave BENCHMARKS.md alone")
    args = parser.parse_args()
    from slice2d.images import read_label_slice, read_slice, slice_geometry
    from slice2d.lesion_classes import split_classes
    from slice2d.orientation import Orientation
    from slice2d.predict import load_run, predict_array
    from slice2d.runs import shipped_model

    lung_run = load_run(shipped_model("lungs"))
    upright = Orientation.from_code(ROTATE).upright
    folds = {k: sorted(c for c in json.loads(Path(args.splits.format(fold=k)).read_text())["test"]
                       if (SEMISEG / "images" / f"{c}.jpg").is_file()) for k in range(args.folds)}
    slices = {}
    for case in (c for cases in folds.values() for c in cases):
        image = read_slice(SEMISEG / "images" / f"{case}.jpg", ROTATE)
        geometry = slice_geometry(image.shape)
        lungs = predict_array(lung_run, image[:, :, None], geometry, batch_size=1, kind="uint8")[0]
        found = next(p for p in (args.maps / f"{case}.jpg", args.maps / f"{case}.png") if p.is_file())
        pred = upright(np.asarray(Image.open(found).convert("L")) > 127)
        slices[case] = (image[:, :, None], read_label_slice(SEMISEG / "masks" / f"{case}.png", ROTATE), lungs,
                        pred[:, :, None], geometry)

    def split(case: str, infection: np.ndarray, setting: tuple[float, float]) -> np.ndarray:
        image, _, lungs, _, geometry = slices[case]
        return split_classes(image, infection, lungs, geometry, kind="uint8", fraction=setting[0],
                             smooth_mm=setting[1])[:, :, 0]

    rows, chosen, fold_of = {"predicted": [], "true": []}, {}, []
    for k, test in folds.items():
        others = [c for j, cases in folds.items() if j != k for c in cases]
        fit = {(f, s): np.mean([np.mean([scores(split(c, slices[c][1][:, :, None] > 0, (f, s)), slices[c][1])[m][0]
                                         for m in (1, 2)]) for c in others]) for f in FRACTIONS for s in SMOOTHING_MM}
        chosen[k] = max(fit, key=fit.get)
        for c in test:
            rows["predicted"].append(scores(split(c, slices[c][3], chosen[k]), slices[c][1]))
            rows["true"].append(scores(split(c, slices[c][1][:, :, None] > 0, chosen[k]), slices[c][1]))
            fold_of.append(k)
    summary = {}
    for source, per_slice in rows.items():
        summary[source] = {str(c): {"dice_mean": float(np.mean([s[c][0] for s in per_slice])),
                                    "dice_pooled": 2 * sum(s[c][1] for s in per_slice) / max(1, sum(s[c][2] for s in per_slice))}
                           for c in (1, 2, "infection")}
    # each fold's per-slice means of the predicted maps' classes, beside other recipes' fold proxies
    summary["predicted_by_fold"] = {k: {str(c): float(np.mean([s[c][0] for s, f in zip(rows["predicted"], fold_of, strict=True)
                                                               if f == k])) for c in (1, 2, "infection")} for k in folds}
    chosen = {k: (float(f), float(s)) for k, (f, s) in chosen.items()}
    print(json.dumps({"fraction_and_smoothing": chosen, **summary}, indent=1))
    today = datetime.date.today().isoformat()
    p, t = summary["predicted"], summary["true"]
    markdown = f"""## Ground-glass and consolidation by density

`{' '.join(['python bench/lesion_classes.py', *sys.argv[1:]])}`, {today}, on {machine()}.
`slice2d predict` writes a binary lesion model's map as ground-glass (1) and consolidation (2),
each lesion pixel placed between its slice's lung and soft-tissue levels
(`slice2d.lesion_classes`). On covid-semiseg ({sum(len(c) for c in folds.values())} slices, 5
folds), the consolidation fraction and the smoothing of the density chosen on the other folds'
true masks ({', '.join(f'{f:g} and {s:g} mm' for f, s in chosen.values())} for folds 0-{args.folds - 1}), applied to the out-of-fold binary maps of {args.recipe or args.maps}
("predicted"), and to the true infection masks ("true infection": what the rule does given the
infection). Lungs from the shipped lung model.

| infection from | ground-glass per slice / pooled | consolidation per slice / pooled | infection per slice / pooled |
|---|---|---|---|
| predicted | {p['1']['dice_mean']:.3f} / {p['1']['dice_pooled']:.3f} | {p['2']['dice_mean']:.3f} / {p['2']['dice_pooled']:.3f} | {p['infection']['dice_mean']:.3f} / {p['infection']['dice_pooled']:.3f} |
| true infection | {t['1']['dice_mean']:.3f} / {t['1']['dice_pooled']:.3f} | {t['2']['dice_mean']:.3f} / {t['2']['dice_pooled']:.3f} | 1.000 / 1.000 |
"""
    if args.no_record:
        print(markdown)
    else:
        write_section("lesion-classes", markdown, {"date": today, "machine": machine(), "fraction_and_smoothing": chosen,
                                                   "command": sys.argv[1:], **summary})


if __name__ == "__main__":
    main()
