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
- ``--moderate`` also writes ``<out>/<task>-wholescan-moderate-<size>.h5``: the same scans at
  1.6 and 2.4 mm pixels and 5 mm slices, as ordinary reconstructions of other scanners give them.
  ``--per-scan`` writes the lesion negatives also one file per scan, so that a check can train
  without one of them and test on it.
- ``--coarse`` also writes ``<out>/<task>-wholescan-coarse-<size>.h5``: the same three scans
  resampled to thick slices with coarse pixels (5 mm slices; 3 mm and 5 mm pixels), as a scanner
  reconstructing a small matrix, or a user's downsampled archive, gives them. Their vessels blur
  into soft blobs that a model taught only on fine pixels calls ground-glass; as negatives they
  teach it otherwise. Averaged over each new voxel's extent (anti-aliased), not sampled.

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


COARSE_SPACINGS_MM = ((3.0, 3.0, 5.0), (5.0, 5.0, 5.0))  # (in-plane, in-plane, slice) of the coarse copies
# Copies at the pixel sizes and slice thicknesses of ordinary reconstructions (a 512 matrix over a
# wide field of view, a 256 matrix, 5 mm slices): the network sees them at about its own input
# pixel size, so they vary the negatives' texture as another scanner would, not their scale.
MODERATE_SPACINGS_MM = ((1.6, 1.6, 5.0), (2.4, 2.4, 5.0))


def coarse_copy(img, spacing_mm: tuple[float, float, float | None]):
    """``img`` resampled to ``spacing_mm`` (its own axes; None keeps that axis), each new voxel the
    anti-aliased average of the old ones it covers; the affine keeps every voxel centre where it
    lies in space."""
    from skimage.transform import resize

    old = np.asarray(img.header.get_zooms()[:3], float)
    factor = np.asarray([o if s is None else s for s, o in zip(spacing_mm, old, strict=True)]) / old
    shape = tuple(max(1, round(n / f)) for n, f in zip(img.shape, factor, strict=True))
    factor = np.asarray(img.shape) / np.asarray(shape)  # the exact factors of the rounded shape
    image = resize(np.asarray(img.dataobj, np.float32), shape, order=1, anti_aliasing=True, preserve_range=True)
    affine = img.affine.copy()
    affine[:3, :3] = img.affine[:3, :3] * factor  # column k scaled by axis k's factor
    affine[:3, 3] = img.affine[:3, :3] @ ((factor - 1) / 2) + img.affine[:3, 3]  # new voxel 0's centre
    return nib.Nifti1Image(np.round(image).astype(np.int16), affine)


def write_coarse_volumes(out: Path, folder: str = "coarse", keep_slices: bool = False,
                         spacings: tuple = COARSE_SPACINGS_MM) -> None:
    """<folder>/images/ and <folder>/lesions/ (empty): every training scan at each of ``spacings``
    (with ``keep_slices``, coarse pixels on the scan's own slices)."""
    for sub in ("images", "lesions"):
        (out / folder / sub).mkdir(parents=True, exist_ok=True)
    for name in TRAIN_SCANS:
        img = nib.load(out / "images" / f"{name}.nii.gz")
        for spacing in spacings:
            case = f"{name}-{spacing[0]:g}mm"
            spacing = (spacing[0], spacing[1], None) if keep_slices else spacing
            if (out / folder / "lesions" / f"{case}.nii.gz").is_file():
                continue
            small = coarse_copy(img, spacing)
            nib.save(small, out / folder / "images" / f"{case}.nii.gz")
            label_img = nib.Nifti1Image(np.zeros(small.shape, np.uint8), small.affine)
            label_img.set_data_dtype(np.uint8)
            nib.save(label_img, out / folder / "lesions" / f"{case}.nii.gz")
            print(f"{case}: {small.shape}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/material"))
    parser.add_argument("--lesion-size", type=int, default=256, help="slice size of the lesion material")
    parser.add_argument("--lesion-config", default="real-lesions",
                        help="the lesion recipe whose data settings (classes, intensity) the negatives take: "
                             "real-lesions (binary) or real-lesions3 (ground-glass and consolidation)")
    parser.add_argument("--coarse", action="store_true",
                        help="also the negatives at thick slices and coarse pixels (<task>-wholescan-coarse-<size>.h5)")
    parser.add_argument("--coarse-pixels-only", action="store_true",
                        help="with --coarse: coarse pixels on each scan's own slices (<task>-wholescan-coarse2d-<size>.h5)")
    parser.add_argument("--moderate", action="store_true",
                        help="also the negatives at 1.6 and 2.4 mm pixels and 5 mm slices (<task>-wholescan-moderate-<size>.h5)")
    parser.add_argument("--per-scan", action="store_true",
                        help="lesion negatives also as one file per scan (...-<size>-<scan>.h5), "
                             "so that a check can leave one scan out of the training")
    args = parser.parse_args()
    from slice2d.config import load_config
    from slice2d.dataset import prepare

    write_volumes(args.out)
    lungs = args.out / "lungs-wholescan-128.h5"
    if not lungs.exists():
        prepare(args.out / "images", args.out / "lungs", lungs, load_config("real-lungs"))
    task = args.lesion_config.removeprefix("real-")  # lesions-wholescan-256.h5, lesions3-wholescan-256.h5
    lesion_cfg = load_config(args.lesion_config).updated(data={"size": args.lesion_size})
    folders = {"": args.out}  # file infix -> folder holding images/ and lesions/
    if args.coarse:
        folder = "coarse2d" if args.coarse_pixels_only else "coarse"
        write_coarse_volumes(args.out, folder, keep_slices=args.coarse_pixels_only)
        folders[f"-{folder}"] = args.out / folder
    if args.moderate:
        write_coarse_volumes(args.out, "moderate", spacings=MODERATE_SPACINGS_MM)
        folders["-moderate"] = args.out / "moderate"
    for infix, folder in folders.items():
        lesions = args.out / f"{task}-wholescan{infix}-{args.lesion_size}.h5"
        if not lesions.exists():
            prepare(folder / "images", folder / "lesions", lesions, lesion_cfg)
        print(f"wrote {lesions}")
        for name in TRAIN_SCANS if args.per_scan else ():
            one = args.out / f"{task}-wholescan{infix}-{args.lesion_size}-{name}.h5"
            if one.exists():
                continue
            subset = args.out / "per-scan" / f"{name}{infix}"
            for sub in ("images", "lesions"):
                (subset / sub).mkdir(parents=True, exist_ok=True)
                for path in (folder / sub).glob(f"{name}*.nii.gz"):
                    link = subset / sub / path.name
                    if not link.exists():
                        link.symlink_to(path.resolve())
            prepare(subset / "images", subset / "lesions", one, lesion_cfg)
            print(f"wrote {one}")


if __name__ == "__main__":
    main()
