"""lungmask R231 on one CT volume, the whole process: the other tool that `bench/performance.py
predict --lungmask PYTHON` times beside `slice2d predict`.

    PYTHON bench/lungmask_child.py VOLUME OUT.nii.gz [--weights unet_r231.pth]

Run by an interpreter that has lungmask (and with it PyTorch and SimpleITK): `pip install
"slice2d[lungmask]"`, or lungmask alone in a venv of its own. It imports nothing of slice2d.

lungmask downloads its weights from GitHub at first use. Without --weights (a machine that cannot
reach GitHub), the R231 network is built as lungmask builds it (a U-Net of depth 5 with batch norm,
3 classes) with seeded random weights in place of the trained ones: the same layers on the same
inputs, so the same computation, but maps without meaning. Its volume postprocessing (connected
components of the maps, then filling) is then skipped, since on such maps it would time other
work than on lung maps: the time is lungmask's least, reading, preprocessing (its per-slice body
crop and resampling to 256x256), the network and writing included.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("volume", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--weights", type=Path, help="lungmask's unet_r231 state dict (default: random weights, see above)")
    args = parser.parse_args()

    start = time.perf_counter()
    import SimpleITK as sitk
    import torch
    from lungmask import LMInferer
    from lungmask.resunet import UNet

    with tempfile.TemporaryDirectory() as tmp:
        weights = args.weights
        if weights is None:
            torch.manual_seed(0)
            net = UNet(n_classes=3, padding=True, depth=5, up_mode="upsample", batch_norm=True, residual=False)
            weights = Path(tmp) / "unet_r231-random.pth"
            torch.save(net.state_dict(), weights)
        inferer = LMInferer(modelpath=str(weights), force_cpu=True, tqdm_disable=True,
                            volume_postprocessing=args.weights is not None)
        image = sitk.ReadImage(str(args.volume))
        labels = inferer.apply(image)  # (z, y, x) array, 1 right lung, 2 left
        out = sitk.GetImageFromArray(labels.astype("uint8"))
        out.CopyInformation(image)
        sitk.WriteImage(out, str(args.out))
    print(f"lungmask R231 ({'trained' if args.weights else 'random'} weights): {time.perf_counter() - start:.1f} s "
          f"in-process, {labels.shape} written", file=sys.stderr)


if __name__ == "__main__":
    main()
