"""Out-of-fold lesion maps on covid-ct-slices beside MiniSeg's, patient by patient.

    python bench/versus_miniseg.py runs/real/lesions-256-cv-maps/covid-ct-slices

The folder holds one 256x256 0/255 mask per slice of covid-ct-slices, named like the slice
(``NNNN.png``), each from a model that never trained on that slice's patient (``bench/real_cv.py``
writes them). Scored exactly as ``../shared/data/anchors/miniseg-p20/score.py`` scores MiniSeg's
published cross-validation maps: per slice, Dice of mask > 127 against the infection mask > 127;
per patient and overall, the mean of the per-slice Dice and the pooled Dice. Patients are the 15 of
covid-ct-slices' ``cases.csv``, the unit its folds are split by. With ``--json PATH`` the table is
also written as JSON.

With ``--record NAME --cv RESULTS.json --command "..."`` the comparison becomes row NAME of the
"lesions-vs-miniseg" section of BENCHMARKS.md (rows of other recipes stay; NAME's row is replaced):
the per-slice and pooled Dice over the 1,156 slices, the patients ahead of MiniSeg, covid-semiseg's
scores and the cross-validation's time from ``bench/real_cv.py``'s results file, and the command
that reproduces it; the per-patient table of the best row follows. With ``--partial`` only the
patients the folder covers whole are scored (a run on some folds: a proxy to choose a recipe by),
MiniSeg on the same patients, into the "lesions-proxies" section.

Each summary keeps the sums behind its pooled Dice (``inter``: Σ|P ∩ G|, ``total``: Σ(|P| + |G|)),
so proxy rows of one recipe run at different times on disjoint folds add up to the whole
protocol: ``--merge ROW [ROW ...] --record NAME --command "..."`` (no maps) joins those rows of
the "lesions-proxies" section into row NAME, of "lesions-vs-miniseg" when they cover all 15
patients, and of "lesions-proxies" otherwise; covid-semiseg's scores are the rows' fold-weighted
means and the training hours their sum.
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


def overlap(p: np.ndarray, g: np.ndarray) -> tuple[float, int, int]:
    """(Dice, |P & G|, |P| + |G|) of one slice's masks, as the anchor's score.py scores them (both
    empty: Dice 1)."""
    inter, total = int((p & g).sum()), int(p.sum() + g.sum())
    return 1.0 if total == 0 else 2 * inter / total, inter, total


def slice_scores(maps: Path, patients: set[str] | None = None) -> dict[str, list[tuple[float, int, int]]]:
    """patient -> [(Dice, |P & G|, |P| + |G|) of each slice], slices in file order; only
    ``patients`` when given."""
    per: dict[str, list[tuple[float, int, int]]] = {}
    with open(SLICES / "cases.csv") as f:
        for row in csv.DictReader(f):
            if patients is not None and row["case"] not in patients:
                continue
            if not (maps / row["slice"]).is_file():
                raise SystemExit(f"{maps / row['slice']}: missing; the folder needs a mask for every slice")
            p, g = _mask(maps / row["slice"]), _mask(SLICES / "infection" / row["slice"])
            per.setdefault(row["case"], []).append(overlap(p, g))
    return per


def summary(vals: list[tuple[float, int, int]]) -> dict[str, float]:
    inter, total = sum(v[1] for v in vals), sum(v[2] for v in vals)
    return {"n": len(vals), "mean": float(np.mean([v[0] for v in vals])), "pooled": 2 * inter / max(1, total),
            "inter": inter, "total": total}


def pool(parts: list[dict[str, float]]) -> dict[str, float]:
    """One summary of several (disjoint slices): the slice-weighted mean of per-slice Dice, and
    the pooled Dice of the summed overlaps."""
    if any("inter" not in p for p in parts):
        raise SystemExit("a row to merge has no pooled sums (recorded before they were kept): run its folds again")
    n, inter, total = sum(p["n"] for p in parts), sum(p["inter"] for p in parts), sum(p["total"] for p in parts)
    return {"n": n, "mean": sum(p["n"] * p["mean"] for p in parts) / n, "pooled": 2 * inter / max(1, total),
            "inter": inter, "total": total}


def widest_lungs() -> dict[str, int]:
    """patient -> the widest left-to-right extent, in pixels, of covid-ct-slices' reference lungs
    on any of the patient's slices (as stored: turning a patient upside down keeps it)."""
    widths: dict[str, int] = {}
    with open(SLICES / "cases.csv") as f:
        for row in csv.DictReader(f):
            cols = np.flatnonzero((np.asarray(Image.open(SLICES / "lungs" / row["slice"])) > 0).any(axis=0))
            if cols.size:
                widths[row["case"]] = max(widths.get(row["case"], 0), int(cols[-1] - cols[0] + 1))
    return widths


def complete_patients(maps: Path) -> set[str]:
    """The patients of covid-ct-slices all of whose slices have a mask in ``maps``."""
    with open(SLICES / "cases.csv") as f:
        rows = list(csv.DictReader(f))
    missing = {r["case"] for r in rows if not (maps / r["slice"]).is_file()}
    return {r["case"] for r in rows} - missing


def compare(maps: Path, partial: bool = False) -> dict:
    """Our maps and MiniSeg's, scored alike; ``partial``: only the patients ``maps`` covers whole
    (a cross-validation run on some folds), MiniSeg on the same patients."""
    patients = complete_patients(maps) if partial else None
    if patients is not None and not patients:
        raise SystemExit(f"{maps}: no patient has a mask for every one of its slices")
    ours, theirs = slice_scores(maps, patients), slice_scores(MINISEG, patients)
    patients = {p: {"ours": summary(ours[p]), "miniseg": summary(theirs[p])} for p in ours}
    return {"maps": str(maps), **_totals(patients)}


def _totals(patients: dict[str, dict]) -> dict:
    """Per-patient summaries with the overall ones and the count of patients ahead of MiniSeg."""
    overall = {who: pool([r[who] for r in patients.values()]) for who in ("ours", "miniseg")}
    ahead = sum(r["ours"]["mean"] > r["miniseg"]["mean"] for r in patients.values())
    return {"patients": patients, "overall": overall, "ahead_per_slice_mean": ahead}


def merge(rows: dict[str, dict], names: list[str]) -> dict:
    """Proxy rows ``names`` (of ``rows``, the "lesions-proxies" section's) joined into one row: their
    patients must not overlap. Returns the row without command and date."""
    missing = [n for n in names if n not in rows]
    if missing:
        raise SystemExit(f"no proxy row named {missing[0]!r}: the names are the keys of bench/results/lesions-proxies.json")
    patients: dict[str, dict] = {}
    for name in names:
        for patient, r in rows[name]["result"]["patients"].items():
            if patient in patients:
                raise SystemExit(f"{patient} is in more than one row to merge; merge rows of disjoint folds")
            patients[patient] = r
    picked = [rows[n] for n in names]
    folds = sum(r["folds"] for r in picked)
    semi = [r for r in picked if r["semiseg_mean"] is not None]
    semi_folds = sum(r["folds"] for r in semi)
    return {"result": {"maps": [r["result"]["maps"] for r in picked], **_totals(patients)}, "folds": folds,
            "hours": sum(r["hours"] for r in picked), "machine": "; ".join(dict.fromkeys(r["machine"] for r in picked)),
            "semiseg_mean": sum(r["folds"] * r["semiseg_mean"] for r in semi) / semi_folds if semi else None,
            "semiseg_pooled": sum(r["folds"] * r["semiseg_pooled"] for r in semi) / semi_folds if semi else None}


def table(result: dict) -> str:
    lines = ["| patient | slices | ours: per-slice mean | MiniSeg | ours: pooled | MiniSeg |", "|---|---|---|---|---|---|"]
    rows = list(result["patients"].items()) + [("**all**", result["overall"])]
    for name, r in rows:
        o, m = r["ours"], r["miniseg"]
        lines.append(f"| {name} | {o['n']} | {o['mean']:.3f} | {m['mean']:.3f} | {o['pooled']:.3f} | {m['pooled']:.3f} |")
    lines.append(f"\nAhead of MiniSeg (per-slice mean) on {result['ahead_per_slice_mean']} of {len(result['patients'])} patients.")
    return "\n".join(lines)


def training_hours(cv_results: Path) -> float:
    """Wall hours the folds of a ``bench/real_cv.py`` results file took to train: for the run
    folder ``<name>-fold<k>`` beside it of each fold k the file scores, from its split file
    (written first) to its model card (written last); an ensemble's (``bench/real_cv.py
    --ensemble``), those of its members' runs."""
    stem = cv_results.name.split("-cv")[0]
    cv = json.loads(cv_results.read_text())
    runs = [d for d in (cv_results.parent / f"{stem}-fold{k}" for k in sorted(cv)) if d.is_dir()]
    if not runs:
        runs = sorted({Path(m) for fold in cv.values() for m in fold.get("members", [])})
    return sum((r / "README.md").stat().st_mtime - (r / "splits.json").stat().st_mtime
               for r in runs if (r / "README.md").exists()) / 3600


def cv_row(result: dict, cv_results: Path) -> dict:
    """A row of ``result`` (``compare``'s) with folds, hours and covid-semiseg's scores from
    ``bench/real_cv.py``'s results file."""
    from record import machine

    cv = json.loads(cv_results.read_text())
    semiseg = [f["sets"]["covid-semiseg"]["lesion"] for f in cv.values() if "covid-semiseg" in f["sets"]]
    return {"machine": machine(), "result": result, "folds": len(cv), "hours": training_hours(cv_results),
            "semiseg_mean": float(np.mean([m["dice_mean"] for m in semiseg])) if semiseg else None,
            "semiseg_pooled": float(np.mean([m["dice_pooled"] for m in semiseg])) if semiseg else None}


def section_rows(section: str) -> dict[str, dict]:
    """The rows recorded so far in ``section`` ("lesions-proxies" or "lesions-vs-miniseg")."""
    from record import RESULTS

    path = RESULTS / f"{section}.json"
    return json.loads(path.read_text())["rows"] if path.exists() else {}


def record(name: str, row: dict, command: str, partial: bool = False) -> None:
    """Row ``name`` (``cv_row``'s or ``merge``'s) of the "lesions-vs-miniseg" section of
    BENCHMARKS.md (see the module docstring); ``partial``: of the "lesions-proxies" section (some
    folds only, MiniSeg on the same patients)."""
    import time

    from record import write_section

    section = "lesions-proxies" if partial else "lesions-vs-miniseg"
    rows = section_rows(section)
    rows[name] = {"command": command, "date": time.strftime("%Y-%m-%d"), **row}
    anchor = row["result"]["overall"]["miniseg"]
    lines = ["| recipe | covid-ct-slices per-slice mean | pooled | patients ahead of MiniSeg | covid-semiseg per-slice / pooled (mean of folds) | folds, training hours (2 cores) | date, CPU |",
             "|---|---|---|---|---|---|---|"]
    if not partial:
        lines.append(f"| MiniSeg (published out-of-fold maps, 512x512, 80 epochs) | {anchor['mean']:.3f} | {anchor['pooled']:.3f} "
                     "| | | 5 | |")
    for row_name, row in rows.items():
        o = row["result"]["overall"]["ours"]
        semi = (f"{row['semiseg_mean']:.3f} / {row['semiseg_pooled']:.3f}" if row["semiseg_mean"] is not None else "")
        m = row["result"]["overall"]["miniseg"]
        versus = f" (MiniSeg {m['mean']:.3f})" if partial else ""
        versus_pooled = f" (MiniSeg {m['pooled']:.3f})" if partial else ""
        lines.append(f"| {row_name} | {o['mean']:.3f}{versus} | {o['pooled']:.3f}{versus_pooled} | {row['result']['ahead_per_slice_mean']} of "
                     f"{len(row['result']['patients'])} | {semi} | {row['folds']}, {row['hours']:.1f} | {row['date']}, "
                     f"{row['machine'].split(' (')[0].replace('(R)', '')} |")
    best = max(rows, key=lambda r: rows[r]["result"]["overall"]["ours"]["mean"])
    commands = "\n".join(f"- {n}: `{r['command']}`" for n, r in rows.items())
    if partial:
        title, scope = "## Lesion recipes on a few folds (proxies)", (
            "Cheap proxies to choose a recipe by: the first folds of the 5-fold split by patient only, "
            "scored on the patients those folds test (all their slices), MiniSeg's maps on the same "
            "patients in brackets (`python bench/versus_miniseg.py MAPS --partial`). Not a result to "
            "report: that takes all five folds (`bench/real_cv.py` without `--only`, then "
            "`bench/versus_miniseg.py MAPS --record NAME`), in the \"Lesions beside MiniSeg\" section.")
    else:
        title, scope = "## Lesions beside MiniSeg, like for like", (
            "Out-of-fold lesion maps on all 1,156 slices of covid-ct-slices, 5 folds by patient (the 15 "
            "patients of its `cases.csv`; each slice predicted by the fold model that never trained on its "
            "patient), scored exactly as `../shared/data/anchors/miniseg-p20/score.py` scores MiniSeg's "
            "published out-of-fold maps (`python bench/versus_miniseg.py MAPS`).")
    write_section(section, f"""{title}

{scope} Training hours: wall time from the first to the last file of each fold's run folder,
whatever else the machine ran meanwhile. Machines (2 cores, 24 GB RAM, no GPU each):
{"; ".join(sorted({r['machine'] for r in rows.values()}))}.

{chr(10).join(lines)}

Commands:
{commands}

Per patient, {best}, beside MiniSeg:

{table(rows[best]['result'])}
""", {"rows": rows})


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("maps", type=Path, nargs="?", help="folder of NNNN.png out-of-fold masks")
    parser.add_argument("--json", type=Path, default=None, help="also write the table as JSON here")
    parser.add_argument("--record", metavar="NAME", default=None, help="write row NAME into BENCHMARKS.md")
    parser.add_argument("--cv", type=Path, default=None, help="bench/real_cv.py's results file of these maps")
    parser.add_argument("--command", default=None, help="the command that reproduces the maps")
    parser.add_argument("--partial", action="store_true",
                        help="score only the patients the folder covers whole (some folds), MiniSeg on the same")
    parser.add_argument("--merge", nargs="+", metavar="ROW", default=None,
                        help="no maps: join these proxy rows (disjoint folds of one recipe) into one")
    args = parser.parse_args(argv)
    if (args.maps is None) == (args.merge is None):
        parser.error("give either a maps folder or --merge ROW [ROW ...]")
    if args.merge:
        row = merge(section_rows("lesions-proxies"), args.merge)
        result = row["result"]
        partial = len(result["patients"]) < 15
    else:
        result, partial = compare(args.maps, args.partial), args.partial
    print(table(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    if args.record:
        if not args.command or not (args.cv or args.merge):
            parser.error("--record needs --command, and --cv unless it merges rows")
        record(args.record, row if args.merge else cv_row(result, args.cv), args.command, partial)
    return result


if __name__ == "__main__":
    main()
