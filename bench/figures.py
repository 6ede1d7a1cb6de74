"""The README's pictures: `slice2d predict` with the shipped models on a real scan and on a folder of slices.

    python bench/figures.py     (needs ../shared/data; writes bench/figures/*.png)
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT.parent / "shared" / "data"


def main() -> None:
    figures = ROOT / "bench" / "figures"
    figures.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        scan = SAMPLES / "ct-samples" / "cmb-crc-chest-ct.nii.gz"
        subprocess.run([sys.executable, "-m", "slice2d.cli", "predict", str(scan), "--out", str(tmp / "scan"), "-q"],
                       check=True)
        shutil.copy(tmp / "scan" / "severity" / "cmb-crc-chest-ct.png", figures / "predict-cmb-crc-chest-ct.png")
        # twelve consecutive slices of one patient of covid-ct-slices, as a folder of PNG exports
        folder = tmp / "coronacases_003"
        folder.mkdir()
        for i in range(300, 324, 2):
            shutil.copy(SAMPLES / "covid-ct-slices" / "images" / f"{i:04d}.png", folder / f"slice{i:04d}.png")
        subprocess.run([sys.executable, "-m", "slice2d.cli", "predict", str(folder), "--out", str(tmp / "slices"), "-q"],
                       check=True)
        shutil.copy(tmp / "slices" / "severity" / "coronacases_003.png", figures / "predict-slice-folder.png")
    print(f"wrote {figures}")


if __name__ == "__main__":
    main()
