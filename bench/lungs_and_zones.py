"""Built-in lung extraction and lung zones against the real references in ../shared/data/ct-samples.

Run: python bench/lungs_and_zones.py   (prints a Markdown table; needs ../shared/data)
"""

from __future__ import annotations

import platform
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np

from slice2d.lungs import extract_lungs_nifti
from slice2d.zones import lung_zones

SAMPLES = Path(__file__).resolve().parents[2] / "shared" / "data" / "ct-samples"


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2 * np.count_nonzero(a & b) / (np.count_nonzero(a) + np.count_nonzero(b))


def main() -> None:
    if not SAMPLES.is_dir():
        sys.exit(f"{SAMPLES} not found; this benchmark needs the real CT samples")
    ct = nib.load(SAMPLES / "copdgene-10002K-ct-64.nii.gz")
    ref = np.asarray(nib.load(SAMPLES / "copdgene-10002K-lungs-64.nii.gz").dataobj)
    zones_ref = np.asarray(nib.load(SAMPLES / "copdgene-10002K-zones-64.nii.gz").dataobj)
    times = []
    for _ in range(5):
        start = time.perf_counter()
        lungs = extract_lungs_nifti(ct)
        times.append(time.perf_counter() - start)
    print(f"machine: {platform.machine()}, {platform.processor() or 'cpu'}, python {platform.python_version()}")
    print("\n| copdgene-10002K (64x64x79, 4.2 mm) | Dice vs reference |\n|---|---|")
    print(f"| right lung | {dice(lungs == 1, ref == 1):.4f} |\n| left lung | {dice(lungs == 2, ref == 2):.4f} |")
    print(f"| both lungs | {dice(lungs > 0, ref > 0):.4f} |")
    print(f"\nextraction time, median of 5: {np.median(times):.2f} s")
    print("\n| zones from the reference lung mask | voxels agreeing with copdgene-10002K-zones-64 |\n|---|---|")
    inside = zones_ref > 0
    for label, method, joint in (("extent, per lung (default)", "extent", False), ("volume, per lung", "volume", False),
                                 ("volume, both lungs together", "volume", True)):
        zones = lung_zones(ref, ct.affine, method=method, joint=joint)
        print(f"| {label} | {np.mean(zones[inside] == zones_ref[inside]):.4f} |")
    big = nib.load(SAMPLES / "cmb-crc-chest-ct.nii.gz")
    start = time.perf_counter()
    lungs = extract_lungs_nifti(big)
    elapsed = time.perf_counter() - start
    voxel_ml = float(np.prod(big.header.get_zooms()[:3])) / 1000
    print(f"\ncmb-crc-chest-ct (512x512x100): right {np.count_nonzero(lungs == 1) * voxel_ml:.0f} mL, "
          f"left {np.count_nonzero(lungs == 2) * voxel_ml:.0f} mL, {elapsed:.1f} s")


if __name__ == "__main__":
    main()
