"""Training material that covers whole scans: every slice of real chest CTs, neck to abdomen.

    python bench/whole_scan_material.py --out runs/material

The covid-ct-slices the models first learned from hold only mid-lung slices with infection. This
writes every axial slice of three whole real chest CTs without COVID-19 (cmb-crc-chest-ct, and the
LIDC-IDRI-0001 and CPTAC C3N-00247 DICOM series, read with ``slice2d.dicom``) as training
material, in two prepared slice files:

- ``<out>/lungs-wholescan-128.h5``: lung pseudo-labels from the built-in extraction
  (``slice2d.lungs``: enclosed air in the body, gas pockets and airways left out), merged into one
  mask and split by side as ``configs/real-lungs.yaml`` does for covid-ct-slices. Check them by eye:
  ``<out>/check-<scan>.png`` draws them on twelve slices from the top of the scan to the bottom.
- ``<out>/lesions-wholescan-<size>.h5``: the same slices with empty lesion maps, as negatives for
  the lesion model (trachea, shoulders, table, bowel gas and normal lung are not infection);
  ``--lesion-config real-lesions3`` writes ``<out>/lesions3-wholescan-<size>.h5`` with the
  three-class recipe's data settings instead.

Scans kept out of the material, for testing the models trained with it: copdgene-10002K and the
TotalSegmentator example (whose reference lung masks score the lung map), RICORD 000082 (COVID-19,
no lesion labels), and whatever scans the project keeps aside.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import nibabel as nib
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
TRAIN_SCANS = {"cmb-crc-chest-ct": DATA / "ct-samples" / "cmb-crc-chest-ct.nii.gz",
               "lidc-idri-0001": DATA / "dicom" / "lidc-idri-0001",
               "cptac-c3n-00247": DATA / "dicom" / "cptac-c3n-00247"}


def _check_figure(image: np.ndarray, lungs: np.ndarray, affine: np.ndarray, path: Path) -> None:
    """Twelve axial slices, superior to inferior, the lung pseudo-label outlined (R cyan, L green)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from slice2d.io import Geometry, to_canonical

    geometry = Geometry(affine, image.shape, tuple(nib.aff2axcodes(affine)))
    img, lun = to_canonical(image, geometry), to_canonical(lungs, geometry)  # (P, L, S): rows anterior->posterior
    fig, axes = plt.subplots(2, 6, figsize=(18, 6.5))
    for ax, z in zip(axes.ravel(), np.linspace(img.shape[2] - 1, 0, 12).round().astype(int), strict=True):
        ax.imshow(img[:, :, z], cmap="gray", vmin=-1350, vmax=150)  # (P, L): anterior up, patient right on the left
        for value, colour in ((1, "cyan"), (2, "lime")):
            m = lun[:, :, z] == value
            if m.any():
                ax.contour(m, levels=[0.5], colors=colour, linewidths=0.7)
        ax.set_title(f"slice {z}", fontsize=8)
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=60)
    plt.close(fig)


def write_volumes(out: Path) -> None:
    """images/, lungs/ (merged 0/1) and lesions/ (empty) as NIfTI in ``out``."""
    from slice2d.dicom import load_series
    from slice2d.lungs import extract_lungs_nifti

    for sub in ("images", "lungs", "lesions"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    for name, source in TRAIN_SCANS.items():
        if (out / "lesions" / f"{name}.nii.gz").is_file():
            continue
        img = nib.load(source) if source.is_file() else load_series(source)
        image = np.asarray(img.dataobj)
        lungs = extract_lungs_nifti(img)
        _check_figure(image, lungs, img.affine, out / f"check-{name}.png")
        nib.save(nib.Nifti1Image(image.astype(np.int16), img.affine), out / "images" / f"{name}.nii.gz")
        for sub, labels in (("lungs", (lungs > 0).astype(np.uint8)), ("lesions", np.zeros(image.shape, np.uint8))):
            label_img = nib.Nifti1Image(labels, img.affine)
            label_img.set_data_dtype(np.uint8)
            nib.save(label_img, out / sub / f"{name}.nii.gz")
        print(f"{name}: {image.shape}, lungs {np.count_nonzero(lungs) * abs(np.linalg.det(img.affine[:3, :3])) / 1e6:.2f} L")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/material"))
    parser.add_argument("--lesion-size", type=int, default=256, help="slice size of the lesion material")
    parser.add_argument("--lesion-config", default="real-lesions",
                        help="the lesion recipe whose data settings (classes, intensity) the negatives take: "
                             "real-lesions (binary) or real-lesions3 (ground-glass and consolidation)")
    args = parser.parse_args()
    from slice2d.config import load_config
    from slice2d.dataset import prepare

    write_volumes(args.out)
    lungs = args.out / "lungs-wholescan-128.h5"
    if not lungs.exists():
        prepare(args.out / "images", args.out / "lungs", lungs, load_config("real-lungs"))
    task = args.lesion_config.removeprefix("real-")  # lesions-wholescan-256.h5, lesions3-wholescan-256.h5
    lesions = args.out / f"{task}-wholescan-{args.lesion_size}.h5"
    if not lesions.exists():
        prepare(args.out / "images", args.out / "lesions", lesions,
                load_config(args.lesion_config).updated(data={"size": args.lesion_size}))
    print(f"wrote {lungs} and {lesions}")


if __name__ == "__main__":
    main()
