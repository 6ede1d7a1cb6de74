"""slice2d.dicom against dcm2niix on the real DICOM series of ../shared/data/dicom.

For each series: dcm2niix (an independent converter; Debian package ``dcm2niix``, not a slice2d
dependency) writes a NIfTI file; slice2d reads the series. dcm2niix stores the rows the other way
(its arrays are LAS where slice2d's are LPS for an axial series), so its volume is brought onto
slice2d's grid by a permutation/flip of axes (exact, no resampling) and then compared: the largest
affine difference (mm), and the voxels that differ. slice2d floors padding and outside-FOV codes
to -1024 HU where dcm2niix keeps them, so voxels below -1024 HU in dcm2niix's volume are counted
apart. A series slice2d refuses is shown with its reason and dcm2niix's outputs.

    python bench/dicom_geometry.py              # prints one Markdown table
    python bench/dicom_geometry.py niftis DIR   # the chest series as DIR/<name>.nii.gz (read-time baseline)
    python bench/dicom_geometry.py read PATH    # read one series folder or .nii.gz (what farm-bench times)
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel.orientations import apply_orientation, inv_ornt_aff, io_orientation, ornt_transform

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from slice2d.dicom import load_series  # noqa: E402
from slice2d.io import InputError  # noqa: E402

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "dicom"
SERIES = ["lidc-idri-0001", "cptac-c3n-00247", "ricord-1a-000082", "head-gantry-tilt"]


def dcm2niix(folder: Path, out: Path) -> list[Path]:
    """dcm2niix's NIfTI files for ``folder`` (uncompressed, no BIDS sidecar)."""
    out.mkdir(parents=True)
    subprocess.run(["dcm2niix", "-z", "n", "-b", "n", "-f", "%f", "-o", str(out), str(folder)],
                   check=True, capture_output=True)
    return sorted(out.glob("*.nii"))


def onto(img: nib.Nifti1Image, reference: nib.Nifti1Image) -> tuple[np.ndarray, np.ndarray]:
    """``img``'s voxels and affine with its axes in ``reference``'s order (exact)."""
    transform = ornt_transform(io_orientation(img.affine), io_orientation(reference.affine))
    return apply_orientation(np.asanyarray(img.get_fdata()), transform), img.affine @ inv_ornt_aff(transform, img.shape)


def compare(name: str, tmp: Path) -> str:
    converted = dcm2niix(DATA / name, tmp / name)
    try:
        ours = load_series(DATA / name)
    except InputError as exc:
        reason = str(exc).split(": ", 2)[-1]
        return f"| {name} | refused: {reason} | {', '.join(p.name for p in converted)} | | | |"
    (theirs,) = [nib.load(p) for p in converted]
    data, affine = onto(theirs, ours)
    mine = np.asanyarray(ours.dataobj)
    floored = data < -1024
    differ = np.count_nonzero((data != mine) & ~floored)
    codes = nib.aff2axcodes(ours.affine), nib.aff2axcodes(theirs.affine)
    return (f"| {name} | {ours.shape} {''.join(codes[0])} | {theirs.shape} {''.join(codes[1])} | "
            f"{np.abs(affine - ours.affine).max():.1e} | {differ} | {np.count_nonzero(floored)} "
            f"(slice2d: {np.unique(mine[floored]).tolist() if floored.any() else '-'}) |")


def read(path: Path) -> None:
    """Read a volume into memory the way ``predict`` does: a series folder, or a .nii.gz file."""
    img = load_series(path) if path.is_dir() else nib.load(path)
    np.asanyarray(img.dataobj)


def main() -> None:
    if sys.argv[1:2] == ["read"]:
        return read(Path(sys.argv[2]))
    if sys.argv[1:2] == ["niftis"]:
        for name in SERIES[:3]:
            nib.save(load_series(DATA / name), Path(sys.argv[2]) / f"{name}.nii.gz")
        return None
    print("| series | slice2d shape, axes | dcm2niix shape, axes | max affine difference (mm) "
          "| voxels that differ (>= -1024 HU) | voxels below -1024 HU in dcm2niix |")
    print("|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for name in SERIES:
            print(compare(name, Path(tmp)), flush=True)


if __name__ == "__main__":
    main()
