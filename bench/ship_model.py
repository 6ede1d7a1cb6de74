"""Copy a trained run into checkpoints/<task>/ as a shipped default model, with its model card.

    python bench/ship_model.py lungs runs/real/lungs-128-all --cv runs/real/lungs-128-cv.json

The model is re-saved without optimiser state (a few MB), loaded back in safe mode to check it,
and the model card gets the cross-validation table, the data's licences and the commands.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from slice2d.predict import load_run
from slice2d.runs import SHIPPED, copy_run, field_note

DATA_NOTES = {
    "covid-ct-slices": "COVID-19 CT Lung and Infection Segmentation Dataset (Ma et al., Medical Physics 2021; "
                       "Zenodo 3757476): annotations CC BY 4.0; CT images from coronacases.org and Radiopaedia "
                       "(CC BY-NC-SA); slices exported by the COVID19-CT-Segmentation project (code MIT).",
    "covid-semiseg": "MedSeg COVID-19 CT segmentation dataset as split by Inf-Net / COVID-SemiSeg "
                     "(Fan et al., IEEE TMI 2020); see LICENSE_Inf-Net.txt beside the data.",
}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("task", choices=["lesions", "lungs", "lesions3"])
    parser.add_argument("run", type=Path)
    parser.add_argument("--cv", type=Path, required=True, help="the <task>-<size>-cv.json of bench/real_cv.py")
    parser.add_argument("--command", default=None, help="the command that trained the folds")
    parser.add_argument("--note", default=None, help="a remark for the model card (e.g. where the CV table comes from)")
    parser.add_argument("--name", default=None,
                        help="folder under checkpoints/ (default: the task, i.e. the default model of predict)")
    args = parser.parse_args()
    run = load_run(args.run)  # the run folder checks
    cv = json.loads(args.cv.read_text())
    rows = []
    for fold, res in sorted(cv.items()):
        for set_name, classes in res["sets"].items():
            for cls, m in classes.items():
                rows.append(f"| {set_name} | {cls} | {fold} | {m['n_slices']} | {m['dice_mean']:.3f} | "
                            f"{m['iou_mean']:.3f} | {m['dice_pooled']:.3f} |")
    sets = sorted({s for res in cv.values() for s in res["sets"]})
    # each test patient's slices pooled, by the fold model that never trained on the patient
    patients = [f"| {set_name} | {cls} | {patient} | {fold} | {dice:.3f} |"
                for fold, res in sorted(cv.items()) for set_name, classes in res["sets"].items()
                for cls, m in classes.items() if len(m.get("dice_by_patient", {})) < m["n_slices"]  # not one slice each
                for patient, dice in sorted(m.get("dice_by_patient", {}).items())]
    per_patient = ("\n## Per patient (pooled Dice of the patient's test slices)\n\n"
                   "| set | class | patient | fold | pooled Dice |\n|---|---|---|---|---|\n" + "\n".join(patients) + "\n"
                   ) if patients else ""
    cfg = run.cfg
    if cfg.train.folds > 1:
        provenance = (f"- This is the model of fold {cfg.train.fold} of a {cfg.train.folds}-fold cross-validation (trained on\n"
                      "  the other folds' patients, `splits.json`); it was not retrained on all data.")
    elif cfg.train.val_fraction == 0:
        provenance = ("- Trained once on every patient of the data sets below (no validation split; cosine schedule,\n"
                      "  last epoch kept). The cross-validation table below estimates how this recipe does on patients\n"
                      "  it has not seen; this model itself has no held-out score.")
    else:
        provenance = ("- Trained once on all patients of the data sets below, except a validation split of patients\n"
                      f"  (`splits.json`) {'that only reported (cosine schedule, last epoch kept)' if cfg.train.schedule == 'cosine' else 'that picked the best epoch'}. The cross-validation table below estimates how\n"
                      "  this recipe does on patients it has not seen; this model itself has no held-out score.")
    if cfg.predict.foreground_threshold == 0.5:
        threshold_note = ", the plain argmax"
    elif cfg.train.val_fraction == 0:
        threshold_note = "; fixed before training: there is no validation split to choose it on"
    else:
        threshold_note = "; chosen on the validation split with `bench/real_cv.py --calibrate`"
    heads = (f"; trained with deep supervision (softmax heads at the {cfg.model.deep_supervision} decoder levels below the "
             "top; only the top head is kept)" if cfg.model.deep_supervision else "")
    # what `slice2d predict` writes of a binary lesion model (slice2d.lesion_classes)
    written = ("\n- `slice2d predict` writes this model's lesion map as ground-glass (1) and consolidation (2), told apart "
               "by density against each slice's lung and soft-tissue levels (`slice2d.lesion_classes`; covid-semiseg, 5 "
               "folds: BENCHMARKS.md, Ground-glass and consolidation by density); `--binary` writes it as 1."
               if cfg.data.task == "lesions" and cfg.n_classes == 2 else "")
    card = f"""# slice2d shipped model: {args.name or args.task}

- U-Net depth {cfg.model.depth}, base filters {cfg.model.base_filters}; classes {list(cfg.data.classes)}{heads};
  {cfg.data.size}x{cfg.data.size} slices in the radiological display orientation.
- Intensity convention: NIfTI in HU windowed to {list(cfg.data.intensity.window)} HU, 8-bit slices / 255,
  then `{cfg.data.intensity.mode}` (per-slice min-max + CLAHE, clip {cfg.data.intensity.clahe_clip},
  {cfg.data.intensity.clahe_tiles}x{cfg.data.intensity.clahe_tiles} tiles).{field_note(cfg)}
{provenance}
- Foreground threshold {cfg.predict.foreground_threshold:g} (`predict.foreground_threshold`: a pixel is foreground where its
  foreground probability exceeds it{threshold_note}).{written}
- Trained with: `{args.command or 'python bench/real_cv.py ' + args.task}`
{f'- {args.note}' if args.note else ''}

## Cross-validation (each fold's test patients, unseen in training and in choosing the epoch; slices at their original resolution; `bench/real_cv.py`)

| set | class | fold | slices | per-slice Dice | per-slice IoU | pooled Dice |
|---|---|---|---|---|---|---|
{chr(10).join(rows)}
{per_patient}
## Training data and licences
{chr(10).join(f'- {DATA_NOTES[s]}' for s in sets)}

The Radiopaedia images are CC BY-NC-SA: use these weights for non-commercial research only, with
attribution to the data sets above.
"""
    dest = copy_run(args.run, SHIPPED / (args.name or args.task), card)
    print(f"shipped {args.run} -> {dest} ({(dest / 'model.keras').stat().st_size / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()
