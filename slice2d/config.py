"""Typed, frozen configuration: the one source of defaults.

A config has three parts: ``data`` (how volumes become slices: intensity window, slice size,
which labels are learned), ``model`` (the U-Net) and ``train`` (loss, augmentation, schedule).
YAML files in ``configs/`` override any subset of the defaults below; unknown keys are errors,
so a typo never silently falls back to a default.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

# The YAML presets live in the repository's top-level configs/ (install with `pip install -e .`).
PRESETS_DIR = Path(__file__).resolve().parent.parent / "configs"


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


ANY_FOREGROUND = 255  # in label arrays: foreground of an unknown class (label_map target -1)


class IntensityConfig(_Frozen):
    """How raw intensities become the network's [0, 1] input.

    Inputs come in two kinds: NIfTI volumes, which must be in Hounsfield units (clipped to
    ``window`` and scaled to [0, 1]; a volume with no air below -500 is refused as "not HU"), and
    8-bit slice images (JPG/PNG exports, already windowed by whoever exported them: divided by 255).
    ``mode`` says what happens next:
    ``window``: nothing; the network sees the windowed intensities.
    ``clahe``: each axial slice is min-max stretched and equalised with CLAHE (contrast-limited
    adaptive histogram equalisation), which makes HU volumes and 8-bit exports with different
    windows look alike to the network.
    """

    mode: Literal["window", "clahe"] = "window"
    window: tuple[float, float] = (-1000.0, 400.0)
    clahe_clip: float = Field(2.0, gt=0)
    clahe_tiles: int = Field(8, ge=1)

    @field_validator("window")
    @classmethod
    def _ordered(cls, w: tuple[float, float]) -> tuple[float, float]:
        if not w[0] < w[1]:
            raise ValueError(f"window low {w[0]} must be below high {w[1]}")
        return w


class DataConfig(_Frozen):
    """Volumes to slices.

    size: side of the square slice the network sees (pixels).
    classes: names of the learned classes, index 0 is background.
    label_map: source label value -> class index; source values not listed become background.
        ``None`` keeps values as they are (they must then be < len(classes)). Target -1: foreground
        of a class the source does not tell (a binary infection mask for a model that tells
        ground-glass from consolidation): stored as ``ANY_FOREGROUND``, such pixels train the
        foreground as a whole and none of its classes (``losses``), a partial label.
    empty_fraction: fraction of slices without any foreground class that ``prepare`` keeps
        (seeded); 1.0 keeps every slice.
    split_lungs: a merged lung mask (any non-zero) is split into 1 right / 2 left lung by side
        (after ``label_map``); for data sets whose lung masks do not tell the sides apart.
    task: what the labels are, so that ``predict`` knows what a model's output means:
        ``lesions`` (1 infection, or 1 ground-glass / 2 consolidation), ``lungs`` (1 right, 2 left),
        ``lobes`` (1 RUL, 2 RML, 3 RLL, 4 LUL, 5 LLL) or ``other``.
    field_mm: the smallest in-plane field of view (mm) a network slice of an HU volume covers. A
        slice whose longer side spans less (a scan reconstructed on a small field, or cropped) is
        centred on a canvas of ``field_mm`` instead of being enlarged to fill it, so the anatomy
        keeps about the scale the model learned from; 0: every slice's longer side fills the
        canvas. Slice images (PNG/JPG) carry no pixel size and always fill it.
    """

    task: Literal["lesions", "lungs", "lobes", "other"] = "lesions"
    intensity: IntensityConfig = IntensityConfig()
    size: int = Field(128, ge=16, le=1024)
    field_mm: float = Field(0.0, ge=0)
    classes: tuple[str, ...] = ("background", "lesion")
    label_map: dict[int, int] | None = {1: 1, 2: 1}
    empty_fraction: float = Field(0.2, ge=0.0, le=1.0)
    split_lungs: bool = False
    seed: int = 0

    @model_validator(mode="after")
    def _labels_fit(self) -> DataConfig:
        if len(self.classes) < 2:
            raise ValueError("classes needs background and at least one foreground class")
        if self.label_map is not None:
            bad = {k: v for k, v in self.label_map.items() if not -1 <= v < len(self.classes)}
            if bad:
                raise ValueError(f"label_map targets {bad} are not class indices 0..{len(self.classes) - 1} "
                                 "(or -1: foreground of an unknown class)")
            if self.partial and len(self.classes) < 3:
                raise ValueError("label_map target -1 (foreground of an unknown class) needs two or more "
                                 "foreground classes; with one, map the value to 1")
        return self

    @property
    def partial(self) -> bool:
        """Whether some source labels name only "foreground", not which class (label_map target -1)."""
        return self.label_map is not None and -1 in self.label_map.values()


class ModelConfig(_Frozen):
    """The U-Net: ``depth`` poolings, ``base_filters`` doubled at each level.

    Default 4 levels of 16 to 128 filters (256 at the bottom): in 5-fold cross-validation on real
    slices it segments COVID-19 lesions better than the cheaper depth 5 / 8 filters (BENCHMARKS.md),
    which the lung and lobe presets use (as accurate for lungs, about twice the training speed).
    """

    depth: int = Field(4, ge=1, le=6)
    base_filters: int = Field(16, ge=4, le=128)
    batch_norm: bool = True
    dropout: float = Field(0.1, ge=0.0, lt=1.0)
    residual: bool = False
    # conv: two 3x3 convolutions per level; separable: depthwise 3x3 then pointwise 1x1 (MobileNet's
    # factorisation: 5.8 to 8.7 times fewer multiply-adds at 16 to 256 filters), a plain convolution on the
    # one-channel input; multiscale: each 3x3 convolution split into four parallel ones dilated 1, 2, 4
    # and 8, a quarter of the filters each (the same weights and multiply-adds, 17 pixels across)
    block: Literal["conv", "separable", "multiscale"] = "conv"
    # deep supervision (as nnU-Net trains): the decoder levels 1..deep_supervision below the top
    # get their own softmax head during training, upsampled to the slice, and the loss adds theirs
    # with weights halving level by level; the saved model has the top head only. 0: off.
    deep_supervision: int = Field(0, ge=0)
    # 2.5D input: the ``context`` neighbouring slices on each side join the slice as input channels
    # (z - context .. z + context); at a stack's ends the nearest slice stands in. 0: the slice alone.
    context: int = Field(0, ge=0, le=3)

    @model_validator(mode="after")
    def _supervised_levels_exist(self) -> ModelConfig:
        if self.deep_supervision >= self.depth:
            raise ValueError(f"model.deep_supervision {self.deep_supervision}: must be below model.depth ({self.depth})")
        return self


class AugmentConfig(_Frozen):
    """Probability of each albumentations transform (0 disables it), and the zoom range of shift_scale_rotate."""

    vertical_flip: float = Field(0.5, ge=0, le=1)
    # left-right flips swap the patient's sides: only for labels without a side (lesions)
    horizontal_flip: float = Field(0.0, ge=0, le=1)
    shift_scale_rotate: float = Field(0.5, ge=0, le=1)
    brightness_contrast: float = Field(0.3, ge=0, le=1)
    grid_distortion: float = Field(0.2, ge=0, le=1)
    gamma: float = Field(0.0, ge=0, le=1)   # intensity curve (gamma 0.8-1.25): windows and exports differ
    noise: float = Field(0.0, ge=0, le=1)   # Gaussian noise (sd noise_std of the range): dose and kernel
    # sd range of that noise, as a fraction of [0, 1]; exports differ several-fold in grain (BENCHMARKS.md)
    noise_std: tuple[float, float] = (0.01, 0.04)
    blur: float = Field(0.0, ge=0, le=1)    # Gaussian blur (3-5 px): reconstruction kernel, thick slices
    # the slice shrunk to 25-90 % of its size and grown back: coarse pixels (small matrices,
    # resampled or low-resolution scans), whose blurred vessels look like lesion to a model that never saw them
    downscale: float = Field(0.0, ge=0, le=1)
    # zoom range of shift_scale_rotate (nnU-Net draws 0.7-1.4): body sizes and fields of view differ
    scale: tuple[float, float] = (0.9, 1.1)

    @model_validator(mode="after")
    def _ranges_are_ranges(self) -> AugmentConfig:
        low, high = self.scale
        if not 0 < low <= high:
            raise ValueError(f"train.augment.scale {list(self.scale)}: must be [low, high] with 0 < low <= high")
        low, high = self.noise_std
        if not 0 < low <= high <= 1:
            raise ValueError(f"train.augment.noise_std {list(self.noise_std)}: must be [low, high] with 0 < low <= high <= 1")
        return self


class TrainConfig(_Frozen):
    """Optimisation. The loss is ``focal_weight * focal + dice_weight * soft Dice``."""

    epochs: int = Field(30, ge=1)
    batch_size: int = Field(16, ge=1)
    learning_rate: float = Field(1e-3, gt=0)
    min_learning_rate: float = Field(1e-5, gt=0)
    # plateau: halve the rate when the validation loss stalls, stop early, keep the best epoch.
    # cosine: decay from learning_rate to min_learning_rate over all epochs, keep the last epoch
    # (the validation set only reports; it picks nothing, so a small one cannot mislead it)
    schedule: Literal["plateau", "cosine"] = "plateau"
    lr_patience: int = Field(3, ge=1)
    early_stopping_patience: int = Field(8, ge=1)
    focal_weight: float = Field(1.0, ge=0)
    focal_gamma: float = Field(2.0, ge=0)
    dice_weight: float = Field(1.0, ge=0)
    # batch: soft Dice pooled over the batch (nnU-Net's batch Dice); sample: each slice's own Dice,
    # averaged (what per-slice benchmarks report; small lesions weigh as much as large ones)
    dice: Literal["batch", "sample"] = "batch"
    # share of the patients that validate (at least one); 0: none, every patient trains (cosine
    # schedule only: it keeps the last epoch, so validation would only have reported)
    val_fraction: float = Field(0.2, ge=0, lt=1)
    folds: int = Field(1, ge=1)
    fold: int = Field(0, ge=0)
    seed: int = 0
    # XLA compilation of the training step. "auto": on, unless TensorFlow runs its oneDNN CPU
    # kernels (TensorFlow's own choice on CPUs with AVX-512 VNNI or BF16, AVX-VNNI or AMX;
    # slice2d asks for them on any CPU with AVX2, ``hardware.prefer_onednn``), which trained
    # faster than XLA on the Xeon and the AMD EPYC measured (BENCHMARKS.md); on a GPU, on.
    jit_compile: Literal[True, False, "auto"] = "auto"
    mixed_precision: bool = True  # float16 compute with float32 weights, on a GPU
    # compute precision on a CPU: float32, bfloat16 (float32 weights; native where the CPU has
    # AMX-BF16 or AVX-512 BF16, emulated and slow elsewhere), or auto (bfloat16 where native)
    cpu_precision: Literal["float32", "bfloat16", "auto"] = "float32"
    augment: AugmentConfig = AugmentConfig()
    # patch: train on random patch x patch crops of the (augmented) slices, a share of them
    # (foreground_crops) centred on a foreground pixel, and predict on whole slices (the U-Net is
    # fully convolutional), as nnU-Net trains: the full resolution at a fraction of the cost per
    # step. 0: whole slices.
    patch: int = Field(0, ge=0)
    # with train.patch: the share of patches centred on a foreground pixel of their slice (the rest
    # placed uniformly); 0: every patch placed uniformly
    foreground_crops: float = Field(1 / 3, ge=0.0, le=1.0)
    # How often each slice file's slices are drawn when a run trains on several: file f's share of
    # the draws is proportional to n_f ** (1 - source_balance), n_f its training slices. 0: every
    # slice equally often (files in proportion to their size); 1: every file equally often; 0.5:
    # in proportion to the square root of their size (a small file with labels the others lack,
    # e.g. ground-glass told apart from consolidation, is then drawn more often).
    source_balance: float = Field(0.0, ge=0, le=1)
    # Exponential moving average of the weights (Polyak averaging): the saved model takes the
    # average, updated after every step with this momentum (0.999: about the last 1,000 steps).
    # 0: off, the weights as trained. Cosine schedule only: the average is of the last epochs.
    ema: float = Field(0.0, ge=0, lt=1)

    @model_validator(mode="after")
    def _fold_in_range(self) -> TrainConfig:
        if self.folds > 1 and self.fold >= self.folds:
            raise ValueError(f"fold {self.fold} is not in 0..{self.folds - 1}")
        if self.val_fraction == 0 and self.schedule != "cosine":
            raise ValueError("val_fraction 0 (no validation) needs schedule: cosine; the plateau schedule and "
                             "early stopping follow the validation loss")
        if self.ema and self.schedule != "cosine":
            raise ValueError("train.ema needs schedule: cosine; the plateau schedule keeps its best epoch's own "
                             "weights, not an average")
        return self


class PredictConfig(_Frozen):
    """How the network's class probabilities become labels.

    ``foreground_threshold`` t: with two classes a pixel is foreground where its foreground
    probability exceeds t; with more, the background probability counts t / (1 - t) times in the
    argmax (the same rule for two classes). 0.5 is the plain argmax. A model trained with the focal
    loss tends to be under-confident, and a lower t chosen on a validation split can fit better
    (``bench/real_cv.py --calibrate``); a run folder records the one chosen for it.

    ``mirror``: test-time augmentation; the class probabilities are averaged over the slice and its
    mirror images that the model's labels do not change under (``predict.mirror_axes``): up-down
    when it was trained with vertical flips, and left-right for lesion models only (lung and lobe
    labels name a side). Up to 4 network passes per slice.
    """

    foreground_threshold: float = Field(0.5, gt=0, lt=1)
    mirror: bool = False

    @property
    def background_weight(self) -> float:
        return self.foreground_threshold / (1.0 - self.foreground_threshold)


class Config(_Frozen):
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    predict: PredictConfig = PredictConfig()

    @property
    def n_classes(self) -> int:
        return len(self.data.classes)

    def updated(self, **sections: dict) -> Config:
        """A copy with some fields replaced, e.g. ``cfg.updated(train={"epochs": 2})``."""
        merged = _deep_merge(self.model_dump(), sections)
        try:
            return Config.model_validate(merged)
        except ValidationError as exc:
            raise ConfigError(_one_line(exc)) from None

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)

    @model_validator(mode="after")
    def _patch_fits(self) -> Config:
        patch = self.train.patch
        if patch and (patch > self.data.size or patch % 2 ** self.model.depth):
            raise ValueError(f"train.patch {patch}: must be at most data.size ({self.data.size}) and divisible by "
                             f"2**model.depth = {2 ** self.model.depth}")
        return self

    @model_validator(mode="after")
    def _flips_keep_sides(self) -> Config:
        if self.train.augment.horizontal_flip and (self.data.task in ("lungs", "lobes") or self.data.split_lungs):
            raise ValueError("train.augment.horizontal_flip: a left-right flip swaps right and left lung or lobe "
                             "labels; use it for lesions only")
        return self


class ConfigError(ValueError):
    """A config file that is missing, not YAML, or has a bad field."""


def _deep_merge(base: dict, override: dict) -> dict:
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict) and key != "label_map":
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def preset_path(name: str) -> Path:
    """Path of a built-in preset (``lesions``, ``lesions3``, ``lungs``, ``lobes``, ``demo``)."""
    return PRESETS_DIR / f"{name}.yaml"


def config_from_yaml(text: str, source: str = "config") -> Config:
    """A config from YAML text (as stored in run folders and slice files)."""
    try:
        raw = yaml.safe_load(text) or {}
        return Config.model_validate(_deep_merge(Config().model_dump(), raw))
    except (yaml.YAMLError, ValidationError, TypeError) as exc:
        raise ConfigError(f"{source}: invalid stored config ({exc.__class__.__name__}); was it written by another slice2d version?") from None


def load_config(path: str | Path | None = None) -> Config:
    """Load a YAML config (a file path or a preset name); ``None`` gives the defaults."""
    if path is None:
        return Config()
    p = Path(path)
    if not p.is_file() and preset_path(str(path)).is_file():  # a preset name, even beside a folder of that name
        p = preset_path(str(path))
    if not p.is_file():
        presets = ", ".join(sorted(f.stem for f in PRESETS_DIR.glob("*.yaml")))
        raise ConfigError(f"{path}: config file not found; give a YAML file or a preset ({presets})")
    try:
        raw = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{p}: not valid YAML ({exc.__class__.__name__}); check the indentation") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{p}: expected a mapping with data/model/train sections")
    try:
        return Config.model_validate(_deep_merge(Config().model_dump(), raw))
    except ValidationError as exc:
        raise ConfigError(f"{p}: {_one_line(exc)}") from None


def _one_line(exc: ValidationError) -> str:
    """The first validation error as one line: the field, what is wrong, the value given (a check
    across fields names its fields in its message and has no single value to show)."""
    err = exc.errors()[0]
    if isinstance(err.get("input"), dict):
        return err["msg"].removeprefix("Value error, ")
    return f"{'.'.join(str(x) for x in err['loc'])}: {err['msg']} (got {err.get('input')!r})"
