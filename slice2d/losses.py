"""Focal + Dice loss and per-class overlap metrics, as keras.ops functions with thin registered classes.

Labels arrive as class indices (B, H, W); predictions as softmax probabilities (B, H, W, C).
Dice is computed per foreground class (background is left out so that it cannot dominate), either
pooling the pixels of the whole batch (the "batch Dice" of nnU-Net: a slice without a class then
gives no undefined ratio) or per sample (each slice's own Dice, the quantity that per-slice
benchmarks average; a slice without the class scores near 1 when nothing is predicted there).
Partial labels (``data.label_map`` target -1, stored as ``ANY_FOREGROUND``: "some foreground
class, which one unknown", e.g. a binary infection mask for a ground-glass / consolidation model)
train the foreground as a whole: there the cross-entropy is that of all foreground classes
together, each class's Dice leaves those pixels out, and with ``partial`` one more Dice term, of
the foreground as a whole against everything labelled foreground, joins the classes' mean.
The loss returns one value per sample, so Keras averages it over the global batch correctly under
a distribution strategy. When a strategy splits the batch across replicas, ``FocalDiceLoss.per_sample``
takes a ``pool`` that sums the batch Dice's pooled counts over the replicas, so that the batch Dice
is that of the whole global batch, as on one device.
"""

from __future__ import annotations

import keras
from keras import ops

from slice2d.config import ANY_FOREGROUND

EPS = 1e-6


def _labels(y_true, y_pred):
    """Integer labels (B, *spatial) or (B, *spatial, 1) -> int32 (B, *spatial) like ``y_pred`` without its classes."""
    y_true = ops.cast(y_true, "int32")
    if len(y_true.shape) == len(y_pred.shape):
        y_true = ops.squeeze(y_true, axis=-1)
    return y_true


def _one_hot(y_true, y_pred):
    """Integer labels -> one-hot like ``y_pred`` (B, *spatial, C); 2D or 3D. A partial label
    (``ANY_FOREGROUND``) is all zeros."""
    return ops.one_hot(_labels(y_true, y_pred), y_pred.shape[-1])


def _unknown(y_true, y_pred):
    """1 where the label is ``ANY_FOREGROUND`` (foreground, class unknown), else 0: (B, *spatial) float32."""
    return ops.cast(ops.equal(_labels(y_true, y_pred), ANY_FOREGROUND), "float32")


def focal_loss_per_sample(y_true, y_pred, gamma: float = 2.0):
    """Categorical focal cross-entropy (Lin et al. 2017), the mean over each sample's pixels: (B,).
    A partial label's pixel counts the focal cross-entropy of all foreground classes together."""
    y_onehot = _one_hot(y_true, y_pred)
    p = ops.clip(ops.cast(y_pred, "float32"), EPS, 1.0 - EPS)
    per_pixel = -ops.sum(y_onehot * ops.power(1.0 - p, gamma) * ops.log(p), axis=-1)
    foreground = 1.0 - p[..., 0]  # all foreground classes together
    per_pixel += -_unknown(y_true, y_pred) * ops.power(1.0 - foreground, gamma) * ops.log(foreground)
    return ops.mean(per_pixel, axis=tuple(range(1, len(per_pixel.shape))))


def focal_loss(y_true, y_pred, gamma: float = 2.0):
    """Mean categorical focal cross-entropy over all pixels of the batch."""
    return ops.mean(focal_loss_per_sample(y_true, y_pred, gamma))


def _dice_sums(y_true, y_pred, axes: tuple[int, ...], partial: bool = False):
    """Per foreground class, summed over ``axes``: the soft intersection, and truth plus prediction.
    Pixels of partial labels are left out; ``partial``: the foreground as a whole follows as one
    more class, against every pixel labelled foreground."""
    y_onehot = _one_hot(y_true, y_pred)[..., 1:]
    known = 1.0 - _unknown(y_true, y_pred)
    p = ops.cast(y_pred, "float32")[..., 1:] * ops.expand_dims(known, -1)
    intersection = ops.sum(y_onehot * p, axis=axes)
    denominator = ops.sum(y_onehot, axis=axes) + ops.sum(p, axis=axes)
    if not partial:
        return intersection, denominator
    truth = ops.cast(ops.greater(_labels(y_true, y_pred), 0), "float32")
    foreground = 1.0 - ops.cast(y_pred, "float32")[..., 0]
    union_inter = ops.sum(truth * foreground, axis=axes)
    union_denominator = ops.sum(truth, axis=axes) + ops.sum(foreground, axis=axes)
    return (ops.concatenate([intersection, ops.expand_dims(union_inter, -1)], axis=-1),
            ops.concatenate([denominator, ops.expand_dims(union_denominator, -1)], axis=-1))


def _soft_dice(y_true, y_pred, axes: tuple[int, ...], smooth: float, pool=None, partial: bool = False):
    """Soft Dice of each foreground class, its sums taken over ``axes`` (and ``pool``-ed, if given)."""
    intersection, denominator = _dice_sums(y_true, y_pred, axes, partial)
    if pool is not None:
        intersection, denominator = pool(intersection), pool(denominator)
    return (2.0 * intersection + smooth) / (denominator + smooth)


def soft_dice_loss_per_sample(y_true, y_pred, smooth: float = 1.0, partial: bool = False):
    """1 - each sample's soft Dice, averaged over the foreground classes: (B,)."""
    spatial = tuple(range(1, len(y_pred.shape) - 1))
    return 1.0 - ops.mean(_soft_dice(y_true, y_pred, spatial, smooth, partial=partial), axis=-1)


def soft_dice_loss(y_true, y_pred, smooth: float = 1.0, pool=None, partial: bool = False):
    """1 - mean soft Dice over the foreground classes, each pooled over batch and pixels.

    pool: a function that sums a tensor over the parts of a batch split across replicas (e.g. a
    replica context's ``all_reduce``), so that the Dice pools the whole batch.
    """
    batch_and_spatial = tuple(range(len(y_pred.shape) - 1))
    return 1.0 - ops.mean(_soft_dice(y_true, y_pred, batch_and_spatial, smooth, pool, partial))


@keras.saving.register_keras_serializable(package="slice2d")
class FocalDiceLoss(keras.losses.Loss):
    """``focal_weight * focal(gamma) + dice_weight * soft Dice`` for softmax segmentation, one value
    per sample (B,). ``dice``: "batch" (pooled over the batch; each sample carries the batch's value)
    or "sample" (each sample's own Dice)."""

    def __init__(self, focal_weight: float = 1.0, dice_weight: float = 1.0, gamma: float = 2.0,
                 dice: str = "batch", partial: bool = False, heads: int = 1, name: str = "focal_dice", **kwargs):
        if dice not in ("batch", "sample"):
            raise ValueError(f"dice must be 'batch' or 'sample', got {dice!r}")
        super().__init__(name=name, **kwargs)
        self.focal_weight = focal_weight
        self.dice_weight = dice_weight
        self.gamma = gamma
        self.dice = dice
        self.partial = partial  # the labels may hold partial labels: add the foreground-as-a-whole Dice
        # deep supervision: the probabilities of this many heads side by side on the channel axis
        # (the top head first, ``model.build_unet``); head i weighs 2**-i, the weights summing to 1
        self.heads = heads

    def call(self, y_true, y_pred):
        return self.per_sample(y_true, y_pred)

    def per_sample(self, y_true, y_pred, pool=None):
        """The loss of each sample (B,); ``pool``: see ``soft_dice_loss`` (batch Dice only)."""
        if self.heads == 1:
            return self._one_head(y_true, y_pred, pool)
        n = y_pred.shape[-1] // self.heads
        total = sum(2.0 ** -i for i in range(self.heads))
        return sum(2.0 ** -i / total * self._one_head(y_true, y_pred[..., i * n:(i + 1) * n], pool)
                   for i in range(self.heads))

    def _one_head(self, y_true, y_pred, pool=None):
        focal = focal_loss_per_sample(y_true, y_pred, self.gamma)
        if self.dice == "sample":
            dice = soft_dice_loss_per_sample(y_true, y_pred, partial=self.partial)
        else:
            dice = soft_dice_loss(y_true, y_pred, pool=pool, partial=self.partial) * ops.ones_like(focal)
        return self.focal_weight * focal + self.dice_weight * dice

    def get_config(self) -> dict:
        return {**super().get_config(), "focal_weight": self.focal_weight, "dice_weight": self.dice_weight,
                "gamma": self.gamma, "dice": self.dice, "partial": self.partial, "heads": self.heads}


@keras.saving.register_keras_serializable(package="slice2d")
class OverlapScore(keras.metrics.Metric):
    """Dice or IoU of the argmax prediction, accumulated over all pixels of an epoch.

    class_ids: the classes to score; with several, the result is their mean (e.g. all foreground).
    A class absent from both prediction and truth for the whole epoch scores 1. Pixels of partial
    labels (``ANY_FOREGROUND``) are left out. union: the classes scored as one, and partial labels
    count as theirs (the foreground as a whole).
    """

    def __init__(self, class_ids: list[int], kind: str = "dice", name: str | None = None, union: bool = False,
                 channels: int | None = None, **kwargs):
        if kind not in ("dice", "iou"):
            raise ValueError(f"kind must be 'dice' or 'iou', got {kind!r}")
        super().__init__(name=name or f"{kind}_{'_'.join(map(str, class_ids))}", **kwargs)
        self.class_ids = [int(c) for c in class_ids]
        self.kind = kind
        self.union = union
        self.channels = channels  # the top head's classes, the first channels (deep supervision adds more)
        n = 1 if union else len(self.class_ids)
        self.intersection = self.add_variable(shape=(n,), initializer="zeros", name="intersection")
        self.total = self.add_variable(shape=(n,), initializer="zeros", name="total")

    def update_state(self, y_true, y_pred, sample_weight=None):
        y_true = ops.cast(y_true, "int32")
        if len(y_true.shape) == 4:
            y_true = ops.squeeze(y_true, axis=-1)
        y_hat = ops.argmax(y_pred if self.channels is None else y_pred[..., :self.channels], axis=-1)
        unknown = ops.equal(y_true, ANY_FOREGROUND)
        if self.union:
            t = ops.cast(ops.logical_or(ops.any(ops.stack([ops.equal(y_true, c) for c in self.class_ids]), axis=0),
                                        unknown), "float32")
            p = ops.cast(ops.any(ops.stack([ops.equal(y_hat, c) for c in self.class_ids]), axis=0), "float32")
            self.intersection.assign_add(ops.reshape(ops.sum(t * p), (1,)))
            self.total.assign_add(ops.reshape(ops.sum(t) + ops.sum(p), (1,)))
            return
        known = ops.cast(ops.logical_not(unknown), "float32")
        inter, total = [], []
        for c in self.class_ids:
            t = ops.cast(ops.equal(y_true, c), "float32")
            p = ops.cast(ops.equal(y_hat, c), "float32") * known
            inter.append(ops.sum(t * p))
            total.append(ops.sum(t) + ops.sum(p))
        self.intersection.assign_add(ops.stack(inter))
        self.total.assign_add(ops.stack(total))

    def result(self):
        if self.kind == "dice":
            score = (2.0 * self.intersection + EPS) / (self.total + EPS)
        else:
            score = (self.intersection + EPS) / (self.total - self.intersection + EPS)
        return ops.mean(score)

    def reset_state(self):
        self.intersection.assign(ops.zeros_like(self.intersection))
        self.total.assign(ops.zeros_like(self.total))

    def get_config(self) -> dict:
        return {**super().get_config(), "class_ids": self.class_ids, "kind": self.kind, "union": self.union,
                "channels": self.channels}


def overlap_metrics(classes: tuple[str, ...] | list[str], partial: bool = False) -> list[OverlapScore]:
    """Per-class Dice and IoU for every foreground class, plus the foreground mean Dice (``dice_mean``);
    ``partial`` (labels that name only "foreground" in places): also the Dice of the foreground as
    a whole (``dice_foreground``)."""
    foreground, n = list(range(1, len(classes))), len(classes)
    metrics: list[OverlapScore] = [OverlapScore(foreground, "dice", name="dice_mean", channels=n)]
    for c, name in enumerate(classes[1:], start=1):
        metrics += [OverlapScore([c], "dice", name=f"dice_{name}", channels=n),
                    OverlapScore([c], "iou", name=f"iou_{name}", channels=n)]
    if partial:
        metrics.append(OverlapScore(foreground, "dice", name="dice_foreground", union=True, channels=n))
    return metrics
