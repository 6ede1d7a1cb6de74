"""Out-of-fold lesion maps on covid-ct-slices beside MiniSeg's, patient by patient.

    python bench/versus_miniseg.py runs/real/lesions-256-cv-maps/covid-ct-slices

The folder holds one 256x256 0/255 mask per slice of covid-ct-slices, named like the slice
(``NNNN.png``), each from a model that never trained on that slice's patient (``bench/real_cv.py``
writes them). Scored exactly as ``../shared/data/anchors/miniseg-p20/score.py`` scores MiniSeg's
published cross-validation maps: per slice, Dice of mask > 127 against the infection mask > 127;
per patient and overall, the mean of the per-slice Dice and the pooled Dice. Patients are the 15 of
covid-ct-slices' ``cases.csv``, the unit its folds are split by. With ``--json PATH`` the table is
also written as JSON.
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import numpy as np
from PIL import Image

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
SLICES = DATA / "covid-ct-slices"
MINISEG = DATA / "anchors" / "miniseg-p20" / "maps"


def _mask(path: Path) -> np.ndarray:
    a = np.asarray(Image.open(path))
    if a.shape != (256, 256):
        raise SystemExit(f"{path}: shape {a.shape}, expected (256, 256)")
    return a > 127


def slice_scores(maps: Path) -> dict[str, list[tuple[float, int, int]]]:
    """patient -> [(Dice, |P & G|, |P| + |G|) of each slice], slices in file order."""
    per: dict[str, list[tuple[float, int, int]]] = {}
    with open(SLICES / "cases.csv") as f:
        for row in csv.DictReader(f):
            if not (maps / row["slice"]).is_file():
                raise SystemExit(f"{maps / row['slice']}: missing; the folder needs a mask for every slice")
            p, g = _mask(maps / row["slice"]), _mask(SLICES / "infection" / row["slice"])
            inter, total = int((p & g).sum()), int(p.sum() + g.sum())
            per.setdefault(row["case"], []).append((1.0 if total == 0 else 2 * inter / total, inter, total))
    return per


def summary(vals: list[tuple[float, int, int]]) -> dict[str, float]:
    return {"n": len(vals), "mean": float(np.mean([v[0] for v in vals])),
            "pooled": 2 * sum(v[1] for v in vals) / max(1, sum(v[2] for v in vals))}


def compare(maps: Path) -> dict:
    ours, theirs = slice_scores(maps), slice_scores(MINISEG)
    patients = {p: {"ours": summary(ours[p]), "miniseg": summary(theirs[p])} for p in ours}
    overall = {"ours": summary([v for vals in ours.values() for v in vals]),
               "miniseg": summary([v for vals in theirs.values() for v in vals])}
    ahead = sum(r["ours"]["mean"] > r["miniseg"]["mean"] for r in patients.values())
    return {"maps": str(maps), "patients": patients, "overall": overall, "ahead_per_slice_mean": ahead}


def table(result: dict) -> str:
    lines = ["| patient | slices | ours: per-slice mean | MiniSeg | ours: pooled | MiniSeg |", "|---|---|---|---|---|---|"]
    rows = list(result["patients"].items()) + [("**all**", result["overall"])]
    for name, r in rows:
        o, m = r["ours"], r["miniseg"]
        lines.append(f"| {name} | {o['n']} | {o['mean']:.3f} | {m['mean']:.3f} | {o['pooled']:.3f} | {m['pooled']:.3f} |")
    lines.append(f"\nAhead of MiniSeg (per-slice mean) on {result['ahead_per_slice_mean']} of {len(result['patients'])} patients.")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("maps", type=Path, help="folder of NNNN.png out-of-fold masks")
    parser.add_argument("--json", type=Path, default=None, help="also write the table as JSON here")
    args = parser.parse_args(argv)
    result = compare(args.maps)
    print(table(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
