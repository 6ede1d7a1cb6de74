"""The U-Net (Ronneberger et al. 2015), built with the Keras functional API from built-in layers only.

Input (size, size, 1) normalised slices (1 + 2 * context channels for 2.5D input: the slice
between its neighbours); output (size, size, n_classes) softmax probabilities.
Each level has two 3x3 convolutions (optionally depthwise-separable or dilated multi-scale,
optionally a residual block),
max-pooling on the way down, transposed convolutions and skip connections on the way up; filters
double at each level.
"""

from __future__ import annotations

import re

import keras
import numpy as np
from keras import layers

from slice2d.config import ModelConfig

BACKGROUND_PRIOR_FOREGROUND = 0.01  # initial probability mass of all foreground classes together
DEEP_HEAD = "probabilities_level"  # name prefix of the deep supervision heads (training only)


DILATIONS = (1, 2, 4, 8)  # the branches of a multi-scale convolution (``model.block: multiscale``)


def _branch_filters(filters: int) -> list[int]:
    """How a multi-scale convolution's filters are shared among its ``DILATIONS`` branches: a
    quarter each, the last taking what is left."""
    quarter = filters // len(DILATIONS)
    return [quarter] * (len(DILATIONS) - 1) + [filters - quarter * (len(DILATIONS) - 1)]


def _conv(x, filters: int, cfg: ModelConfig, name: str, dtype: str | None):
    """One 3x3 convolution: plain, depthwise-separable (``model.block``) where the input has more
    than one channel, or multi-scale: parallel 3x3 convolutions dilated by each of ``DILATIONS``,
    each with a share of the filters (``name_dR``), concatenated in that order (``name``). The
    multi-scale one has the weights and multiply-adds of the plain one and sees 17 pixels across
    instead of 3 (the dilated pyramids of ESPNet and MiniSeg, with plain convolutions)."""
    if cfg.block == "multiscale":
        branches = [layers.Conv2D(f, 3, padding="same", dilation_rate=r, use_bias=not cfg.batch_norm,
                                  kernel_initializer="he_normal", name=f"{name}_d{r}", dtype=dtype)(x)
                    for r, f in zip(DILATIONS, _branch_filters(filters), strict=True)]
        return layers.Concatenate(name=name, dtype=dtype)(branches)
    if cfg.block == "separable" and x.shape[-1] > 1:
        return layers.SeparableConv2D(filters, 3, padding="same", use_bias=not cfg.batch_norm,
                                      depthwise_initializer="he_normal", pointwise_initializer="he_normal",
                                      name=name, dtype=dtype)(x)
    return layers.Conv2D(filters, 3, padding="same", use_bias=not cfg.batch_norm, kernel_initializer="he_normal",
                         name=name, dtype=dtype)(x)


def _conv_block(x, filters: int, cfg: ModelConfig, name: str, dtype: str | None):
    shortcut = x
    for i in (1, 2):
        x = _conv(x, filters, cfg, f"{name}_conv{i}", dtype)
        if cfg.batch_norm:
            # momentum 0.9: the moving statistics must settle within the few hundred steps of a small run
            x = layers.BatchNormalization(momentum=0.9, name=f"{name}_bn{i}", dtype=dtype)(x)
        if not (cfg.residual and i == 2):
            x = layers.Activation("relu", name=f"{name}_relu{i}", dtype=dtype)(x)
    if cfg.residual:
        if shortcut.shape[-1] != filters:
            shortcut = layers.Conv2D(filters, 1, padding="same", name=f"{name}_proj", dtype=dtype)(shortcut)
        added = layers.Add(name=f"{name}_add", dtype=dtype)([x, shortcut])
        x = layers.Activation("relu", name=f"{name}_relu2", dtype=dtype)(added)
    return x


def _softmax_head(n_classes: int, name: str) -> layers.Conv2D:
    """A 1x1 convolution to class probabilities, in float32 even under mixed precision (a stable loss)."""
    return layers.Conv2D(n_classes, 1, activation="softmax", dtype="float32", name=name)


def input_channels(cfg: ModelConfig) -> int:
    """Channels of the network's input: the slice and its ``cfg.context`` neighbours on each side."""
    return 1 + 2 * cfg.context


def build_unet(size: int | None, n_classes: int, cfg: ModelConfig, dtype: str | None = None,
               training_heads: bool = False) -> keras.Model:
    """A U-Net for ``size x size`` slices (``input_channels`` channels); ``size`` must be divisible by 2**depth.
    ``size`` None: any height and width divisible by 2**depth (training on patches, ``train.patch``).

    dtype: the dtype policy of every layer but the softmax head (e.g. "mixed_bfloat16"); None: the
    global policy (``keras.config.set_dtype_policy``, which training sets for mixed precision).
    training_heads: with ``cfg.deep_supervision`` k > 0, the network to train: the output is the top
    head's probabilities followed, on the channel axis, by those of the heads of decoder levels
    1..k, each upsampled to the slice (bilinear: still probabilities); ``top_head`` is the network
    to save and predict with.
    """
    if size is not None and size % (2 ** cfg.depth):
        raise ValueError(f"slice size {size} is not divisible by 2**depth = {2 ** cfg.depth}; "
                         "change data.size or model.depth")
    inputs = keras.Input((size, size, input_channels(cfg)), name="slice")
    x = inputs
    skips = []
    for level in range(cfg.depth):
        x = _conv_block(x, cfg.base_filters * 2 ** level, cfg, f"down{level}", dtype)
        skips.append(x)
        x = layers.MaxPooling2D(2, name=f"pool{level}", dtype=dtype)(x)
    x = _conv_block(x, cfg.base_filters * 2 ** cfg.depth, cfg, "bottom", dtype)
    if cfg.dropout:
        x = layers.Dropout(cfg.dropout, name="bottom_dropout", dtype=dtype)(x)
    heads, deep = [], {}
    for level in reversed(range(cfg.depth)):
        filters = cfg.base_filters * 2 ** level
        x = layers.Conv2DTranspose(filters, 2, strides=2, padding="same", name=f"up{level}_transpose", dtype=dtype)(x)
        x = layers.Concatenate(name=f"up{level}_concat", dtype=dtype)([x, skips[level]])
        x = _conv_block(x, filters, cfg, f"up{level}", dtype)
        if training_heads and 0 < level <= cfg.deep_supervision:
            heads.append(_softmax_head(n_classes, f"{DEEP_HEAD}{level}"))
            deep[level] = layers.UpSampling2D(2 ** level, interpolation="bilinear", dtype="float32",
                                              name=f"{DEEP_HEAD}{level}_up")(heads[-1](x))
    heads.append(_softmax_head(n_classes, "probabilities"))
    outputs = heads[-1](x)
    if deep:
        outputs = layers.Concatenate(name="deep_supervision", dtype="float32")([outputs, *(deep[k] for k in sorted(deep))])
    model = keras.Model(inputs, outputs, name="unet")
    # Start from the prior "almost everything is background" (Lin et al. 2017): otherwise the
    # first few hundred steps only learn that, and small foreground classes are learned late.
    prior = np.full(n_classes, BACKGROUND_PRIOR_FOREGROUND / (n_classes - 1), dtype=np.float32)
    prior[0] = 1.0 - BACKGROUND_PRIOR_FOREGROUND
    for head in heads:
        head.bias.assign(np.log(prior))
    return model


def top_head(model: keras.Model) -> keras.Model:
    """The U-Net to save and predict with: ``model`` itself, or, for a network built with deep
    supervision heads, the same layers up to the top head only (no copy: they share weights)."""
    if not any(layer.name == "deep_supervision" for layer in model.layers):
        return model
    return keras.Model(model.inputs, model.get_layer("probabilities").output, name="unet")


def fold_batch_norm(model: keras.Model, size: int, n_classes: int, cfg: ModelConfig,
                    dtype: str = "float32") -> keras.Model:
    """An inference copy of a trained U-Net, with each batch norm folded into the convolution before it.

    At inference a batch norm is a fixed per-channel affine map, so ``conv -> bn`` equals one
    convolution with kernel ``w * s`` and bias ``beta - mean * s``, ``s = gamma / sqrt(var + eps)``
    (float32 rounding aside). The copy has no batch-norm ops, so TensorFlow's CPU graph can fuse
    each convolution with its bias and ReLU. It is built from ``cfg`` (the trained model's own
    architecture, e.g. from its run folder) with the dtype policy ``dtype`` (float32, whatever the
    model was trained in; "mixed_bfloat16" computes in bfloat16 with float32 weights and softmax),
    and shares no variables with ``model``.
    """
    folded = build_unet(size, n_classes, cfg.model_copy(update={"batch_norm": False}), dtype)
    names = {layer.name for layer in model.layers}
    for layer in folded.layers:
        if not layer.weights:
            continue
        weights = [np.asarray(w) for w in model.get_layer(layer.name).get_weights()]
        branch = re.fullmatch(r"(.+)_d(\d+)", layer.name)  # a multi-scale convolution's branch
        conv_name = branch.group(1) if branch else layer.name
        bn_name = conv_name.replace("_conv", "_bn")
        if bn_name != conv_name and bn_name in names:
            bn = model.get_layer(bn_name)
            gamma, beta, mean, var = (np.asarray(w, np.float64) for w in bn.get_weights())
            channels = slice(None)
            if branch:  # the branch's own channels of the batch norm after the concatenation
                shares = _branch_filters(int(bn.gamma.shape[0]))
                k = DILATIONS.index(int(branch.group(2)))
                channels = slice(sum(shares[:k]), sum(shares[:k + 1]))
            gamma, beta, mean, var = gamma[channels], beta[channels], mean[channels], var[channels]
            scale = gamma / np.sqrt(var + bn.epsilon)
            # the last kernel makes the output channels: the 3x3 one, or a separable one's pointwise
            kernel = weights[-1].astype(np.float64) * scale
            weights = [*weights[:-1], kernel.astype(np.float32), (beta - mean * scale).astype(np.float32)]
        layer.set_weights(weights)
    return folded
