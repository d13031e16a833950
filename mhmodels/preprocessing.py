"""One input rule for every zoo model, and ImageNet class names without a download.

The rule: every mhmodels network takes RGB images as float32 in [-1, 1] (NHWC), pretrained or
not, so one call prepares the input of any model:

    x = mhmodels.preprocess_input(uint8_images)          # [0, 255] -> [-1, 1]
    logits = model(x)
    mhmodels.decode_predictions(logits, top=3)           # [[(synset, name, score), ...], ...]

Each published checkpoint names the input it was trained on (`input` in zoo/weights.json, one
of `INPUT_CONVENTIONS`). keras.applications' MobileNetV1 / V2 were trained on [-1, 1]
(`x / 127.5 - 1`) and its MobileNetV3 does that rescaling inside the model (we leave that layer
out). The TF Model Garden's checkpoints were trained on ImageNet mean / std normalised pixels
(official/vision/ops/preprocess_ops.py: (x - MEAN_RGB) / STDDEV_RGB on [0, 255]); for those,
`mhmodels.build(..., weights=...)` puts the exact affine map from [-1, 1] to that input in front
of the network (a fixed per-channel `Rescaling` layer named 'input_normalization', see
`input_normalization`), so the rule above still holds and TFLite exports take [-1, 1] too.

Class layouts: keras.applications checkpoints have 1000 classes; ours and the Model Garden's
have 1001, index 0 being "background" and index i the keras class i - 1. `decode_predictions`
reads the layout from the width of its input and refuses any other width.
"""
from __future__ import annotations

import functools
import json
from typing import Any, Sequence

import numpy as np

__all__ = ["preprocess_input", "decode_predictions", "imagenet_classes", "BACKGROUND",
           "INPUT_CONVENTIONS", "MINUS_ONE_ONE", "IMAGENET_MEAN_STD", "input_normalization",
           "check_calibration_range"]

# Calibration data whose values leave [-INPUT_LIMIT, INPUT_LIMIT] is not [-1, 1] input (raw
# [0, 255] pixels, or mean/std-normalised ones, reach 2.2 - 2.6 and beyond).
INPUT_LIMIT = 1.5

BACKGROUND = ("background", "background")
LAYOUTS = (1000, 1001)

# What a checkpoint was trained on (the `input` field of zoo/weights.json).
MINUS_ONE_ONE = "minus_one_one"
IMAGENET_MEAN_STD = "imagenet_mean_std"
INPUT_CONVENTIONS = {
    MINUS_ONE_ONE: "RGB x / 127.5 - 1 (keras.applications MobileNets, mhmodels)",
    IMAGENET_MEAN_STD: "RGB (x - 255 * (0.485, 0.456, 0.406)) / (255 * (0.229, 0.224, 0.225)) "
                       "(TF Model Garden official.vision)",
}
# official/vision/ops/preprocess_ops.py MEAN_RGB / STDDEV_RGB (on [0, 255] pixels).
IMAGENET_MEAN_RGB = (0.485 * 255, 0.456 * 255, 0.406 * 255)
IMAGENET_STDDEV_RGB = (0.229 * 255, 0.224 * 255, 0.225 * 255)


def input_normalization(convention: str) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    """(scale, offset) per RGB channel mapping our [-1, 1] input onto the input a checkpoint
    was trained on (`y = x * scale + offset`), or None when that is [-1, 1] itself.

    Raises:
      ValueError: an unknown convention.
    """
    if convention not in INPUT_CONVENTIONS:
        raise ValueError(f"unknown input convention {convention!r}; known: "
                         f"{sorted(INPUT_CONVENTIONS)}")
    if convention == MINUS_ONE_ONE:
        return None
    # pixels = 127.5 * (x + 1); y = (pixels - mean) / std
    scale = tuple(127.5 / s for s in IMAGENET_STDDEV_RGB)
    offset = tuple((127.5 - m) / s for m, s in zip(IMAGENET_MEAN_RGB, IMAGENET_STDDEV_RGB))
    return scale, offset


def preprocess_input(images: Any, value_range: tuple[float, float] = (0.0, 255.0)):
    """Map RGB pixels in `value_range` (default [0, 255]) to the [-1, 1] our models take.

    Args:
      images: RGB images (..., 3): a numpy array, a list, or a TensorFlow / Keras tensor.
      value_range: (low, high) of the input pixels, e.g. (0, 1) for float images.
    Returns:
      float32 images in [-1, 1]: a numpy array for numpy / list input, else a tensor.
    Raises:
      ValueError: the last axis is not 3 channels, or value_range is not (low, high) with
        high > low.
    """
    low, high = (float(v) for v in value_range)
    if not high > low:
        raise ValueError(f"value_range must be (low, high) with high > low, got {value_range!r}")
    if isinstance(images, (np.ndarray, list, tuple, int, float, np.generic)):
        x = np.asarray(images, dtype=np.float32)
    else:  # a tensor: keep it one (no round trip through numpy in a tf.data map)
        import keras

        x = keras.ops.cast(images, "float32")
    if len(x.shape) < 1 or x.shape[-1] != 3:
        raise ValueError(f"images must end with 3 RGB channels, got shape {tuple(x.shape)}")
    scale = 2.0 / (high - low)
    return x * scale - (1.0 + low * scale)


@functools.lru_cache(maxsize=1)
def imagenet_classes() -> tuple[tuple[str, str], ...]:
    """The 1000 ImageNet-1k classes in index order as (WordNet synset, short name), read from
    the package's `zoo/imagenet_classes.json` (see tools/make_imagenet_classes.py)."""
    from mhmodels.files import builtin_zoo_dir

    path = builtin_zoo_dir() / "imagenet_classes.json"
    data = json.loads(path.read_text(encoding="utf-8"))
    classes = tuple((synset, lemmas.split(",")[0].strip()) for synset, lemmas in data["classes"])
    if len(classes) != 1000:
        raise ValueError(f"{path} lists {len(classes)} classes, expected 1000: reinstall")
    return classes


def decode_predictions(predictions: Any, top: int = 5, *, layout: int | None = None
                       ) -> list[list[tuple[str, str, float]]]:
    """The `top` classes of each row of `predictions`, best first, like keras.applications.

    Args:
      predictions: (batch, 1000 | 1001) logits or probabilities (one row may be 1-D); 1001-wide
        rows name index 0 'background'.
      top: how many classes per row.
      layout: 1000 or 1001, to state the class layout instead of reading it from the width.
    Returns:
      One list per row of (synset, name, score) tuples, highest score first.
    Raises:
      ValueError: predictions are not 2-D, have a width that is not an ImageNet layout (or
        disagrees with `layout`), or `top` is out of range.
    """
    scores = np.asarray(predictions, dtype=np.float64)
    if scores.ndim == 1:
        scores = scores[None]
    if scores.ndim != 2:
        raise ValueError(f"predictions must be (batch, classes), got shape {scores.shape}")
    width = scores.shape[1]
    if layout is not None and layout not in LAYOUTS:
        raise ValueError(f"layout must be 1000 or 1001, got {layout!r}")
    if width not in LAYOUTS or (layout is not None and layout != width):
        expected = layout or "1000 (keras.applications) or 1001 (background first)"
        raise ValueError(f"predictions have {width} classes; ImageNet layouts have {expected}. "
                         "Models with your own classes need your own names")
    if isinstance(top, bool) or not isinstance(top, int) or not 1 <= top <= width:
        raise ValueError(f"top must be an integer in [1, {width}], got {top!r}")
    names: Sequence[tuple[str, str]] = imagenet_classes()
    if width == 1001:
        names = (BACKGROUND,) + tuple(names)
    out = []
    for row in scores:
        best = np.argsort(-row, kind="stable")[:top]
        out.append([(names[i][0], names[i][1], float(row[i])) for i in best])
    return out


def check_calibration_range(samples, what: str = "representative_data") -> None:
    """Refuse calibration data that breaks the input rule of mhmodels' models ([-1, 1]).

    Calibrating an int8 model on raw [0, 255] pixels sets its input scale to about 1.0, so
    real inputs in [-1, 1] get three levels: a model that converts and then fails silently.
    Every mhmodels model takes [-1, 1], Model Garden checkpoints included (their mean / std
    map is a layer inside the model), so data beyond +-1.5 is refused, naming the fix.

    Raises:
      ValueError: a sample lies outside [-1.5, 1.5].
    """
    low = min((float(np.min(s)) for s in samples), default=0.0)
    high = max((float(np.max(s)) for s in samples), default=0.0)
    if low < -INPUT_LIMIT or high > INPUT_LIMIT:
        hint = ("raw [0, 255] pixels? " if high > 2.0 * INPUT_LIMIT and low >= -1e-6 else "")
        raise ValueError(
            f"{what} spans [{low:.4g}, {high:.4g}], but mhmodels models take RGB in [-1, 1] "
            f"({hint}map images with mhmodels.preprocess_input(images)); calibrating on it "
            "would set the int8 input scale for that range and leave [-1, 1] inputs a few "
            "levels")
