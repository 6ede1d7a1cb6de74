"""The shipped models on real HU scans they were never trained on (../shared/data/ct-samples).

    python bench/shipped_on_scans.py    (writes the "shipped-on-scans" section of BENCHMARKS.md)

Lungs: Dice of the shipped lung model (and of the built-in extraction) against the reference
lung mask of copdgene-10002K; lung volumes and lesion load on cmb-crc-chest-ct, a chest CT
without COVID-19 (so every lesion voxel found there is a false positive).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
from record import machine, write_section

from slice2d.anatomy import LUNG_MARGIN_MM, lesions_near_lungs, lungs_with_lesions
from slice2d.io import geometry_of, read_array
from slice2d.lungs import extract_lungs_nifti
from slice2d.predict import load_run, predict_volume
from slice2d.runs import shipped_model

SAMPLES = Path(__file__).resolve().parents[2] / "shared" / "data" / "ct-samples"
OTHER_LESION_MODELS = ("lesions-128",)


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2 * np.count_nonzero(a & b) / max(1, np.count_nonzero(a) + np.count_nonzero(b))


def main() -> None:
    if not SAMPLES.is_dir():
        sys.exit(f"{SAMPLES} not found; this benchmark needs the real CT samples")
    lesion_run, lung_run = load_run(shipped_model("lesions")), load_run(shipped_model("lungs"))
    results = {}
    for name in ("copdgene-10002K-ct-64", "cmb-crc-chest-ct"):
        img = nib.load(SAMPLES / f"{name}.nii.gz")
        image = read_array(img, name)
        geometry = geometry_of(img)
        # the lung map as `slice2d predict --lung-source model` writes it (small pieces dropped) and the raw lesion map
        lesions, lungs = (m for m, _ in predict_volume([lesion_run, lung_run], image, geometry, lung_run=lung_run))
        (raw_lungs, _), = predict_volume([lung_run], image, geometry)
        voxel_ml = abs(float(np.linalg.det(img.affine[:3, :3]))) / 1000
        builtin = extract_lungs_nifti(img)
        # what `slice2d predict --lung-source model` writes: the lesions that touch the lungs (within LUNG_MARGIN_MM), and
        # the lung map with those of them it had left out added
        written = lesions_near_lungs(lesions, lungs, geometry)
        written_lungs = lungs_with_lesions(lungs, written, geometry)
        results[name] = {"right_ml": np.count_nonzero(lungs == 1) * voxel_ml,
                         "left_ml": np.count_nonzero(lungs == 2) * voxel_ml,
                         "written_lungs_ml": np.count_nonzero(written_lungs) * voxel_ml,
                         "lesion_ml": np.count_nonzero(lesions > 0) * voxel_ml,
                         "lesion_in_lungs_ml": np.count_nonzero((lesions > 0) & (lungs > 0)) * voxel_ml,
                         "lesion_written_ml": np.count_nonzero(written) * voxel_ml,
                         "agreement_with_builtin": dice(lungs > 0, builtin > 0),
                         "lung_pieces_dropped_ml": np.count_nonzero((raw_lungs > 0) & (lungs == 0)) * voxel_ml}
        for other in OTHER_LESION_MODELS:  # the optional shipped lesion models: false positives only
            if path := shipped_model(other, required=False):
                (extra, _), = predict_volume([load_run(path)], image, geometry)
                results[name][f"{other}_in_lungs_ml"] = np.count_nonzero((extra > 0) & (lungs > 0)) * voxel_ml
                results[name][f"{other}_written_ml"] = np.count_nonzero(
                    lesions_near_lungs(extra, lungs, geometry)) * voxel_ml
        if name.startswith("copdgene"):
            ref = np.asarray(nib.load(SAMPLES / "copdgene-10002K-lungs-64.nii.gz").dataobj)
            results[name].update({f"dice_{side}": dice(lungs == v, ref == v) for side, v in (("right", 1), ("left", 2))})
            results[name]["dice_both"] = dice(lungs > 0, ref > 0)
            results[name]["dice_both_raw"] = dice(raw_lungs > 0, ref > 0)
            results[name]["dice_both_written"] = dice(written_lungs > 0, ref > 0)
            results[name]["builtin_dice_both"] = dice(builtin > 0, ref > 0)
    c, m = results["copdgene-10002K-ct-64"], results["cmb-crc-chest-ct"]
    md = f"""## Shipped models on real HU scans

`python bench/shipped_on_scans.py`, {time.strftime('%Y-%m-%d')}, on {machine()}: the networks themselves, and the pipeline
with the lung network as the lung source (`--lung-source model`; the default is the built-in
extraction, see "Whole real scans"). copdgene was in no training; cmb-crc's slices were negatives
in the lesion model's fine-tuning. Both are in HU and go through the same CLAHE convention as the
8-bit training slices.

| scan | what | value |
|---|---|---|
| copdgene-10002K (64×64×79, 4.2 mm) | lung model Dice vs reference, right / left / both | {c['dice_right']:.3f} / {c['dice_left']:.3f} / {c['dice_both']:.3f} |
| copdgene-10002K | the same before dropping lung-map pieces under 1 % of the largest (what was dropped: {c['lung_pieces_dropped_ml']:.1f} mL), both lungs | {c['dice_both_raw']:.3f} |
| copdgene-10002K | the lung map as `slice2d predict --lung-source model` writes it (lesions that touch the lungs added), both lungs | {c['dice_both_written']:.3f} |
| copdgene-10002K | built-in extraction Dice vs reference, both lungs | {c['builtin_dice_both']:.3f} |
| copdgene-10002K (no COVID-19) | lesion model, false-positive lesion volume inside the lungs | {c['lesion_in_lungs_ml']:.1f} mL |
| cmb-crc-chest-ct (512×512×100) | lung volume right / left (lung model; lung-map pieces under 1 % of the largest dropped: {m['lung_pieces_dropped_ml']:.1f} mL) | {m['right_ml']:.0f} / {m['left_ml']:.0f} mL |
| cmb-crc-chest-ct | lung volume as `slice2d predict --lung-source model` writes it (lesions that touch the lungs added) | {m['written_lungs_ml']:.0f} mL |
| cmb-crc-chest-ct | agreement of lung model and built-in extraction (Dice) | {m['agreement_with_builtin']:.3f} |
| cmb-crc-chest-ct (no COVID-19) | lesion model, false-positive lesion volume inside the lungs | {m['lesion_in_lungs_ml']:.1f} mL |
| both (no COVID-19) | false-positive lesion volume anywhere: raw model / as written by `slice2d predict --lung-source model` (each in-plane lesion piece with a pixel within {LUNG_MARGIN_MM:g} mm of the lung map, whole) | copdgene {c['lesion_ml']:.0f} / {c['lesion_written_ml']:.0f} mL, cmb-crc {m['lesion_ml']:.0f} / {m['lesion_written_ml']:.0f} mL |
"""
    for other in OTHER_LESION_MODELS:
        if f"{other}_in_lungs_ml" in c:
            md += (f"| both (no COVID-19) | `checkpoints/{other}`: false-positive lesion volume inside the lungs / as written "
                   f"by `slice2d predict --lung-source model` | copdgene {c[f'{other}_in_lungs_ml']:.1f} / {c[f'{other}_written_ml']:.0f} mL, "
                   f"cmb-crc {m[f'{other}_in_lungs_ml']:.1f} / {m[f'{other}_written_ml']:.0f} mL |\n")
    write_section("shipped-on-scans", md, {"machine": machine(), "results": results})


if __name__ == "__main__":
    main()
