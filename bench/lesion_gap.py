"""Where out-of-fold lesion maps fall short of MiniSeg's: by how much of the lung is infected.

    python bench/lesion_gap.py runs/r19/ds2nv48-p128-cv-calibrated-maps/covid-ct-slices

The folder is one that ``bench/versus_miniseg.py`` scores (a 256x256 0/255 mask per slice of
covid-ct-slices, from models that never trained on that slice's patient); only the patients it
covers whole are used, MiniSeg's published maps on the same slices beside them. Slices are put in
bands by the share of their lung (covid-ct-slices' lung mask) that the true infection covers; per
band: the number of slices, the mean per-slice Dice, recall (Σ|P ∩ G| / Σ|G|) and the predicted
area against the true one (Σ|P| / Σ|G|: above 1, more marked than is there), ours and MiniSeg's.
With ``--figure PNG`` the slices where MiniSeg is furthest ahead are drawn, truth, ours and
MiniSeg's outline on the slice. Numpy, Pillow and matplotlib only.
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
_spec = importlib.util.spec_from_file_location("versus_miniseg", HERE / "versus_miniseg.py")
vm = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(vm)

BANDS = ((0.0, 0.05), (0.05, 0.2), (0.2, 0.5), (0.5, 1.01))  # share of the slice's lung infected


def slice_table(maps: Path) -> list[dict]:
    """One row per slice of the patients ``maps`` covers whole: the truth's, our and MiniSeg's
    areas and overlaps, and the share of the lung infected."""
    patients = vm.complete_patients(maps)
    if not patients:
        raise SystemExit(f"{maps}: no patient has a mask for every one of its slices")
    rows = []
    with open(vm.SLICES / "cases.csv") as f:
        for row in csv.DictReader(f):
            if row["case"] not in patients:
                continue
            name = row["slice"]
            g = vm._mask(vm.SLICES / "infection" / name)
            lung = vm._mask(vm.SLICES / "lungs" / name)
            out = {"slice": name, "patient": row["case"], "truth": int(g.sum()),
                   "share": float((g & lung).sum() / max(1, lung.sum()))}
            for who, folder in (("ours", maps), ("miniseg", vm.MINISEG)):
                p = vm._mask(folder / name)
                dice, inter, _ = vm.overlap(p, g)
                out[who] = {"dice": dice, "inter": inter, "area": int(p.sum())}
            rows.append(out)
    return rows


def bands(rows: list[dict]) -> list[dict]:
    """Per band of infected lung share: slices, and per model mean Dice, recall, area ratio."""
    result = []
    for lo, hi in BANDS:
        part = [r for r in rows if lo <= r["share"] < hi]
        if not part:
            continue
        truth = sum(r["truth"] for r in part)
        line = {"band": f"{lo:.0%}-{min(hi, 1.0):.0%}", "slices": len(part)}
        for who in ("ours", "miniseg"):
            line[who] = {"dice": float(np.mean([r[who]["dice"] for r in part])),
                         "recall": sum(r[who]["inter"] for r in part) / max(1, truth),
                         "area": sum(r[who]["area"] for r in part) / max(1, truth)}
        result.append(line)
    return result


def markdown(result: list[dict]) -> str:
    lines = ["| infected share of the lung | slices | per-slice Dice, ours / MiniSeg | recall | predicted / true area |",
             "|---|---|---|---|---|"]
    for b in result:
        o, m = b["ours"], b["miniseg"]
        lines.append(f"| {b['band']} | {b['slices']} | {o['dice']:.3f} / {m['dice']:.3f} | "
                     f"{o['recall']:.2f} / {m['recall']:.2f} | {o['area']:.2f} / {m['area']:.2f} |")
    return "\n".join(lines)


def figure(rows: list[dict], maps: Path, path: Path, count: int = 6) -> None:
    """The ``count`` slices where MiniSeg's Dice is furthest above ours (at most two per patient)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    picked, per_patient = [], {}
    for r in sorted(rows, key=lambda r: r["ours"]["dice"] - r["miniseg"]["dice"]):
        if per_patient.get(r["patient"], 0) < 2:
            picked.append(r)
            per_patient[r["patient"]] = per_patient.get(r["patient"], 0) + 1
        if len(picked) == count:
            break
    fig, axes = plt.subplots(len(picked), 3, figsize=(7.5, 2.6 * len(picked)), squeeze=False)
    for ax_row, r in zip(axes, picked, strict=True):
        image = np.asarray(Image.open(vm.SLICES / "images" / r["slice"]))
        masks = (("truth", vm._mask(vm.SLICES / "infection" / r["slice"])),
                 (f"ours, Dice {r['ours']['dice']:.2f}", vm._mask(maps / r["slice"])),
                 (f"MiniSeg, Dice {r['miniseg']['dice']:.2f}", vm._mask(vm.MINISEG / r["slice"])))
        for ax, (title, mask) in zip(ax_row, masks, strict=True):
            ax.imshow(image, cmap="gray")
            if mask.any():
                ax.contour(mask, [0.5], colors="red", linewidths=0.7)
            ax.set_title(f"{r['patient']} {r['slice']}: {title}", fontsize=6)
            ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("maps", type=Path, help="folder of NNNN.png out-of-fold masks")
    parser.add_argument("--figure", type=Path, default=None, help="draw the slices furthest behind MiniSeg here")
    args = parser.parse_args(argv)
    rows = slice_table(args.maps)
    result = bands(rows)
    print(f"{len(rows)} slices of {len({r['patient'] for r in rows})} patients")
    print(markdown(result))
    if args.figure:
        figure(rows, args.maps, args.figure)
    return result


if __name__ == "__main__":
    main()
