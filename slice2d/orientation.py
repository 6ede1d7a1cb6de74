"""Which way round a folder of 8-bit slice exports is stored, and the transform that makes it upright.

A PNG/JPG slice has no geometry: some exports are stored upright (anterior at the top, the
patient's right on the image's left, the radiological convention of ``images.py``), others a
quarter or half turn round, or mirrored. The eight possibilities are the dihedral group of the
square: four rotations, each with or without a left-right mirror.

Detection is a tiny CNN ``g`` that scores how *upright* an image looks (spine, table and flat back
at the bottom; heart, aortic arch and descending aorta on the image's right; the liver on the
image's left at the lung bases). A stored slice is put through all eight candidate corrections and
``g`` scores each result; a softmax over the eight scores is the per-slice belief. Scoring
corrections with one function (instead of an 8-way classifier) makes the answer exactly
equivariant: turning the input turns the answer with it. One export has one orientation, so a
folder is decided by adding the per-slice log-probabilities. The weights
(``checkpoints/orientation/weights.npz``, about 130 kB) were trained on real HU volumes windowed to
8 bits and on real 8-bit exports turned upright (``bench/orientation.py train``); inference is plain NumPy, so neither TensorFlow nor a
download is needed.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np

from slice2d.io import InputError

WEIGHTS = Path(__file__).resolve().parent.parent / "checkpoints" / "orientation" / "weights.npz"
INPUT_SIZE = 64        # the scorer's input: the slice padded to a square and resized to 64x64
CONV_FILTERS = (8, 16, 32, 32)   # 3x3 'same' conv + ReLU + 2x2 max-pool each: 64 -> 4 pixels
DENSE_UNITS = 32
# A folder whose winning orientation is the per-slice favourite of fewer than this share of its
# slices is left as stored: a coin-flip decision would do more harm than the export's own order.
MIN_AGREEMENT = 0.5
_STORED_TURNS = ("", "a quarter turn counter-clockwise", "a half turn", "a quarter turn clockwise")


@dataclass(frozen=True)
class Orientation:
    """How to make a stored slice upright: mirror left-right first (if ``mirrored``), then turn
    ``turns`` quarter turns clockwise. ``Orientation(1)`` is the old ``rotate=1``.
    """

    turns: int = 0
    mirrored: bool = False

    def __post_init__(self) -> None:
        if self.turns not in (0, 1, 2, 3):
            raise InputError(f"rotate {self.turns}: quarter turns must be 0, 1, 2 or 3")

    @classmethod
    def from_code(cls, code: int | Orientation) -> Orientation:
        """0-3: that many quarter turns clockwise; 4-7: mirror left-right, then ``code - 4`` turns.

        The integer code is what a prepared HDF5 file records as its ``rotate`` attribute.
        """
        if isinstance(code, Orientation):
            return code
        if int(code) not in range(8):
            raise InputError(f"rotate code {code}: use 0-3 quarter turns, 4-7 for mirrored and turned")
        return cls(int(code) % 4, int(code) >= 4)

    @property
    def code(self) -> int:
        return self.turns + 4 * self.mirrored

    def upright(self, image: np.ndarray) -> np.ndarray:
        """Stored image (H, W[, ...]) -> upright image (a view)."""
        return np.rot90(image[:, ::-1] if self.mirrored else image, k=-self.turns)

    def stored(self, image: np.ndarray) -> np.ndarray:
        """Upright image -> the stored orientation; the exact inverse of ``upright`` (a view)."""
        out = np.rot90(image, k=self.turns)
        return out[:, ::-1] if self.mirrored else out

    @property
    def options(self) -> str:
        """The command-line options that give this orientation."""
        return f"--rotate {self.turns}" + (" --mirror" if self.mirrored else "")

    def describe_stored(self) -> str:
        """How slices needing this correction are stored, in words ("turned a quarter turn clockwise")."""
        if self.code == 0:
            return "upright"
        if self.code == 6:
            return "upside down (mirrored top to bottom)"
        # stored = mirror(upright turned `turns` quarter turns counter-clockwise), mirror optional
        turn = f"turned {_STORED_TURNS[self.turns]}" if self.turns else ""
        mirror = "mirrored left-right" if self.mirrored else ""
        return " and ".join(w for w in (turn, mirror) if w)


ORIENTATIONS = tuple(Orientation.from_code(c) for c in range(8))


@dataclass(frozen=True)
class Decision:
    """A folder's orientation: ``orientation`` is applied to every slice (identity when unsure).

    best: the most likely orientation; agree: how many of the ``n_slices`` slices put it first on
    their own; confident: whether ``agree`` reached ``MIN_AGREEMENT`` (else ``orientation`` is the
    identity and the slices are read as stored).
    """

    orientation: Orientation
    best: Orientation
    agree: int
    n_slices: int
    confident: bool

    def message(self) -> str:
        """One log line for the user: what was found and what was done."""
        found = f"{self.agree} of {self.n_slices} slices agree"
        if not self.confident:
            return (f"orientation of the slices unclear (best guess: stored {self.best.describe_stored()}, "
                    f"{found}); read as stored (set it with --rotate N [--mirror])")
        if self.orientation.code == 0:
            return f"slices stored upright ({found}); read as stored (override with --rotate)"
        return (f"slices stored {self.orientation.describe_stored()} ({found}); turned upright, as "
                f"{self.orientation.options} would (override with --rotate)")


def load_weights(path: str | Path = WEIGHTS) -> dict[str, np.ndarray]:
    """The scorer's arrays: conv{i}_kernel (3, 3, in, out), conv{i}_bias, dense{j}_kernel, dense{j}_bias."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: orientation weights not found; reinstall slice2d, or give --rotate N "
                         "to set the orientation by hand")
    with np.load(path, allow_pickle=False) as npz:
        return {k: npz[k].astype(np.float32) for k in npz.files}


def prepare_slice(image: np.ndarray) -> np.ndarray:
    """An 8-bit slice (H, W) -> the scorer's input (INPUT_SIZE, INPUT_SIZE) float32, zero mean, unit std.

    Padding to a square keeps the body's aspect ratio (wider than deep, a cue for quarter turns);
    standardising makes the lung-window JPGs and the CLAHE-equalised PNGs look alike.
    """
    from PIL import Image

    if image.ndim != 2 or min(image.shape) < 8:
        raise InputError(f"slice of shape {image.shape}: orientation detection needs 2D slices of 8+ pixels")
    rows, cols = image.shape
    side = max(rows, cols)
    square = np.zeros((side, side), np.uint8)
    square[(side - rows) // 2:(side - rows) // 2 + rows, (side - cols) // 2:(side - cols) // 2 + cols] = image
    # float resampling: no rounding, so turning the slice turns its input exactly (equivariance)
    small = np.asarray(Image.fromarray(square.astype(np.float32), mode="F").resize((INPUT_SIZE, INPUT_SIZE),
                                                                                   Image.BILINEAR))
    return (small - small.mean()) / (small.std() + 1e-3)


def _conv_relu_pool(x: np.ndarray, kernel: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """3x3 'same' convolution (Keras semantics, channels last), ReLU, 2x2 max-pool: (N, H, W, C)."""
    padded = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    windows = np.lib.stride_tricks.sliding_window_view(padded, (3, 3), axis=(1, 2))  # N, H, W, C, 3, 3
    y = np.einsum("nhwcij,ijco->nhwo", windows, kernel, optimize=True) + bias
    y = np.maximum(y, 0.0)
    n, h, w, c = y.shape
    return y.reshape(n, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))


def upright_scores(batch: np.ndarray, weights: dict[str, np.ndarray]) -> np.ndarray:
    """g: prepared slices (N, INPUT_SIZE, INPUT_SIZE) -> how upright each looks (N,), a logit."""
    x = batch[..., None].astype(np.float32)
    for i in range(len(CONV_FILTERS)):
        x = _conv_relu_pool(x, weights[f"conv{i}_kernel"], weights[f"conv{i}_bias"])
    x = x.reshape(len(x), -1)
    x = np.maximum(x @ weights["dense0_kernel"] + weights["dense0_bias"], 0.0)
    return (x @ weights["dense1_kernel"] + weights["dense1_bias"])[:, 0]


def slice_log_probs(slices: Iterable[np.ndarray], weights: dict[str, np.ndarray] | None = None,
                    batch: int = 64) -> np.ndarray:
    """Per-slice belief over the eight corrections: log-probabilities (N, 8), column k = ``ORIENTATIONS[k]``.

    slices: 8-bit greyscale slices (H, W) as stored (sizes may differ).
    """
    weights = weights if weights is not None else load_weights()
    prepared = [prepare_slice(np.asarray(s)) for s in slices]
    if not prepared:
        raise InputError("no slices to detect the orientation of")
    out = np.empty((len(prepared), len(ORIENTATIONS)), np.float32)
    for start in range(0, len(prepared), batch):
        chunk = prepared[start:start + batch]
        candidates = np.stack([o.upright(p) for p in chunk for o in ORIENTATIONS])
        logits = upright_scores(candidates, weights).reshape(len(chunk), len(ORIENTATIONS))
        logits -= logits.max(axis=1, keepdims=True)
        out[start:start + len(chunk)] = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    return out


def decide(log_probs: np.ndarray) -> Decision:
    """One orientation for a folder from its per-slice log-probabilities (N, 8)."""
    best = int(np.argmax(log_probs.sum(axis=0)))
    agree = int(np.sum(np.argmax(log_probs, axis=1) == best))
    confident = agree >= MIN_AGREEMENT * len(log_probs)
    return Decision(ORIENTATIONS[best] if confident else ORIENTATIONS[0], ORIENTATIONS[best], agree,
                    len(log_probs), confident)


def detect_orientation(slices: Iterable[np.ndarray], weights: dict[str, np.ndarray] | None = None) -> Decision:
    """The orientation of one export (a list or stack of 8-bit (H, W) slices, as stored)."""
    return decide(slice_log_probs(slices, weights))
