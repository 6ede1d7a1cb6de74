"""How close can lung Dice get to a reference mask? Where the built-in lung map and the reference disagree.

    python bench/lung_reference_limits.py            # writes the "lung-reference-limits" section of BENCHMARKS.md
    python bench/lung_reference_limits.py --no-record

For each whole scan with a reference lung mask in ``../shared/data/ct-samples`` (copdgene-10002K's
lung mask, and the five lobes of the TotalSegmentator example), the built-in extraction that
``slice2d predict`` uses on HU volumes (``slice2d.lungs.extract_anatomy``) against the reference:

- Dice, and how many of the voxels they disagree on lie on the reference's surface (within one
  voxel of its outside or its inside) rather than deeper;
- the median HU of the voxels the reference has and the map misses, and of those the map has
  and the reference does not: a boundary drawn by intensity puts the darker voxels inside;
- the best Dice any single HU threshold reaches near the reference (voxels below the threshold
  within two voxels of either mask, chosen knowing the reference: an upper bound for an
  intensity-drawn boundary, not a method);
- Dice with the reference moved one voxel along each axis (a misregistered reference would score
  higher moved).
"""

from __future__ import annotations

import argparse
import datetime
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).resolve().parent))
from record import machine, write_section  # noqa: E402
from whole_scans import DATA, _references, dice  # noqa: E402  (the same references as "Whole real scans")

CT = DATA / "ct-samples"
THRESHOLDS = range(-700, -150, 10)


def limits(image: np.ndarray, lungs: np.ndarray, ref: np.ndarray) -> dict:
    missed, extra = ref & ~lungs, lungs & ~ref
    surface = ndimage.binary_dilation(ref) & ~ndimage.binary_erosion(ref)  # one voxel either side of its surface
    near = ndimage.binary_dilation(ref | lungs, iterations=2)
    by_threshold = {t: dice(near & (image < t), ref) for t in THRESHOLDS}
    best = max(by_threshold, key=by_threshold.get)
    shifted = [dice(lungs, np.roll(ref, s, axis=a)) for a in range(3) for s in (-1, 1)]
    return {"dice": dice(lungs, ref), "reference_ml_voxels": int(ref.sum()),
            "disagreeing_voxels": int(missed.sum() + extra.sum()),
            "disagreeing_on_surface": float((surface & (missed | extra)).sum() / max(1, (missed | extra).sum())),
            "reference_surface_fraction": float((ref & ~ndimage.binary_erosion(ref)).sum() / max(1, ref.sum())),
            "missed_median_hu": float(np.median(image[missed])) if missed.any() else None,
            "extra_median_hu": float(np.median(image[extra])) if extra.any() else None,
            "best_threshold_hu": best, "best_threshold_dice": by_threshold[best],
            "best_shifted_dice": max(shifted)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-record", action="store_true", help="print only; leave BENCHMARKS.md alone")
    args = parser.parse_args()
    from slice2d.lungs import extract_anatomy_nifti

    results = {}
    for name, labels in _references().items():
        ref = labels > 0
        img = nib.load(CT / f"{name}.nii.gz")
        image = np.asarray(img.dataobj, dtype=np.float32)
        lungs = extract_anatomy_nifti(img, image)[0] > 0
        results[name] = limits(image, lungs, ref)
        print(name, results[name])
    rows = ["| scan | reference voxels (on its surface) | lung Dice | disagreeing voxels on the reference's surface | "
            "median HU: missed / extra | best single HU threshold: Dice (HU) | reference moved one voxel: best Dice |",
            "|---|---|---|---|---|---|---|"]
    for name, r in results.items():
        rows.append(f"| {name} | {r['reference_ml_voxels']} ({100 * r['reference_surface_fraction']:.0f} %) | "
                    f"{r['dice']:.3f} | {100 * r['disagreeing_on_surface']:.0f} % of {r['disagreeing_voxels']} | "
                    f"{r['missed_median_hu']:.0f} / {r['extra_median_hu']:.0f} | "
                    f"{r['best_threshold_dice']:.3f} ({r['best_threshold_hu']}) | {r['best_shifted_dice']:.3f} |")
    today = datetime.date.today().isoformat()
    markdown = f"""## Lung references: where the lung map and the reference disagree

`python bench/lung_reference_limits.py`, {today}, on {machine()}.
The built-in lung extraction (the lung source of `slice2d predict` on HU volumes) against the two
reference lung masks of [Whole real scans](#whole-real-scans). "Best single HU threshold": voxels
below one threshold within two voxels of either mask, the threshold chosen knowing the reference
({THRESHOLDS.start} to {THRESHOLDS.stop - 10} HU in steps of 10): what a boundary drawn by intensity
alone could reach at best. "Missed": in the reference, not in the map; "extra": the reverse.
"Moved one voxel": the reference rolled by one voxel along each axis
in turn.

{chr(10).join(rows)}
"""
    if args.no_record:
        print(markdown)
    else:
        write_section("lung-reference-limits", markdown, {"date": today, "machine": machine(), "results": results})


if __name__ == "__main__":
    main()
