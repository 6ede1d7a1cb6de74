"""How sharp each covid-ct-slices patient's export is, beside how well a recipe does on the patient.

    python bench/slice_texture.py [MAPS | --row TEXT] [--record]

Exports differ in reconstruction kernel and in how they were resampled: some patients' lungs are
grainy, some smooth. This measures, per patient, the fine texture of the lung without infection
(the mean of |image - its 3x3 median| over the reference lung minus the infection, eroded by two
pixels so that the lung's edge does not count; 8-bit grey levels) and the width of the lungs (the
widest left-to-right extent of the reference lung mask on any slice, pixels of 256). With MAPS, a
folder of out-of-fold masks as ``bench/versus_miniseg.py`` takes it, each patient's per-slice Dice
follows, MiniSeg's beside it, and the Spearman rank correlation over the patients of the texture
with our Dice and with MiniSeg's lead. ``--row TEXT`` takes our per-patient Dice from the row of
the "lesions-vs-miniseg" section (``bench/results/lesions-vs-miniseg.json``) whose name starts with
TEXT instead of from maps. ``--record`` writes the table into the "lesion-texture"
section of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import csv
import json
import time
from pathlib import Path

import cv2
import numpy as np
from PIL import Image
from record import RESULTS, machine, write_section
from versus_miniseg import MINISEG, SLICES, complete_patients, slice_scores, summary, widest_lungs


def texture(patient_slices: list[str]) -> float:
    """Mean |image - median3| over the patient's lung without infection, eroded by two pixels."""
    diffs = []
    for name in patient_slices:
        image = np.asarray(Image.open(SLICES / "images" / name).convert("L"))
        lungs = np.asarray(Image.open(SLICES / "lungs" / name)) > 0
        normal = lungs & ~(np.asarray(Image.open(SLICES / "infection" / name)) > 127)
        normal = cv2.erode(normal.astype(np.uint8), np.ones((5, 5), np.uint8)) > 0
        fine = np.abs(image.astype(np.float32) - cv2.medianBlur(image, 3).astype(np.float32))
        diffs.append(fine[normal])
    return float(np.concatenate(diffs).mean())


def spearman(a: list[float], b: list[float]) -> float:
    """Rank correlation of two equally long lists (ties broken by order)."""
    ra, rb = (np.argsort(np.argsort(np.asarray(v))).astype(float) for v in (a, b))
    return float(np.corrcoef(ra, rb)[0, 1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("maps", type=Path, nargs="?", help="folder of NNNN.png out-of-fold masks (optional)")
    parser.add_argument("--row", default=None, metavar="TEXT",
                        help="our per-patient Dice from the recorded full-protocol row whose name starts with TEXT")
    parser.add_argument("--record", action="store_true", help="write the table into BENCHMARKS.md")
    args = parser.parse_args()
    if args.maps and args.row:
        raise SystemExit("give MAPS or --row, not both")

    with open(SLICES / "cases.csv") as f:
        by_patient: dict[str, list[str]] = {}
        for row in csv.DictReader(f):
            by_patient.setdefault(row["case"], []).append(row["slice"])
    patients = sorted(complete_patients(args.maps)) if args.maps else sorted(by_patient)
    ours, source = {}, ""
    if args.maps:
        ours = {p: summary(v)["mean"] for p, v in slice_scores(args.maps, set(patients)).items()}
        source = f" of the out-of-fold maps in `{args.maps}`"
    elif args.row:
        rows = json.loads((RESULTS / "lesions-vs-miniseg.json").read_text())["rows"]
        picked = [name for name in rows if name.startswith(args.row)]
        if len(picked) != 1:
            raise SystemExit(f"--row {args.row!r}: {len(picked)} recorded rows start with it; give more of the name")
        ours = {p: r["ours"]["mean"] for p, r in rows[picked[0]]["result"]["patients"].items()}
        source = f" of the recorded row \"{picked[0]}\""
    widths = widest_lungs()
    measured = {p: (texture(by_patient[p]), widths[p]) for p in patients}
    theirs = {p: summary(v)["mean"] for p, v in slice_scores(MINISEG, set(patients)).items()}

    order = sorted(patients, key=lambda p: measured[p][0])
    head = "| patient | slices | lung texture (grey levels) | widest lung (px) | MiniSeg per-slice Dice |"
    rule = "|---|---|---|---|---|"
    if ours:
        head += " ours | MiniSeg's lead |"
        rule += "---|---|"
    lines = [head, rule]
    for p in order:
        line = f"| {p} | {len(by_patient[p])} | {measured[p][0]:.1f} | {measured[p][1]} | {theirs[p]:.3f} |"
        if ours:
            line += f" {ours[p]:.3f} | {theirs[p] - ours[p]:+.3f} |"
        lines.append(line)
    tex = [measured[p][0] for p in order]
    notes = [f"Spearman rank correlation over the {len(order)} patients, texture against MiniSeg's Dice: "
             f"{spearman(tex, [theirs[p] for p in order]):+.2f}"]
    if ours:
        notes.append(f"against ours: {spearman(tex, [ours[p] for p in order]):+.2f}; "
                     f"against MiniSeg's lead: {spearman(tex, [theirs[p] - ours[p] for p in order]):+.2f}")
    command = ("python bench/slice_texture.py" + (f" {args.maps}" if args.maps else "")
               + (f" --row '{args.row}'" if args.row and not args.maps else "") + " --record")
    md = (f"### Texture of the slice exports\n\n`{command}`, {time.strftime('%Y-%m-%d')}, on {machine()}.\n"
          "Per patient of covid-ct-slices, smoothest first: the fine texture of the lung without infection "
          "(mean |image - 3x3 median| over the reference lung minus the infection, eroded by two pixels; "
          "8-bit grey levels), the widest left-to-right extent of the reference lungs, and per-slice Dice"
          + source + " beside MiniSeg's.\n\n"
          + "\n".join(lines) + "\n\n" + "; ".join(notes) + ".\n")
    print(md)
    if args.record:
        write_section("lesion-texture", md, {"maps": str(args.maps) if args.maps else None,
                                             "patients": {p: {"texture": measured[p][0], "width": measured[p][1],
                                                              "miniseg": theirs[p], "ours": ours.get(p)}
                                                          for p in order}})


if __name__ == "__main__":
    main()
