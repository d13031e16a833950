"""Ready-made `.tflite` files of zoo models with ImageNet weights: the published file when the
manifest lists one, else exported once from the converted weights and cached under
`$MHMODELS_HOME/tflite/` (what `python -m mhmodels.weights download --format=tflite_*` gives).
Above `mhmodels.build` (it builds with weights='imagenet' and exports).
"""
from __future__ import annotations

import logging
from pathlib import Path

from mhmodels import weights as weights_lib
from mhmodels.export import export_tflite
from mhmodels.factory import build
from mhmodels.images import sample_photos

logger = logging.getLogger(__name__)

CALIBRATION_CROPS_PER_PHOTO = 64


def default_calibration_images(size: int):
    """The int8 calibration set used when none is given: 128 square crops (random 40-100% of
    the short side, seed 0) of scikit-learn's two sample photos, in [-1, 1]. Not ImageNet:
    it ships with scikit-learn, so exports are reproducible offline; calibrating on a few
    hundred ImageNet training images instead may give int8 accuracy closer to float."""
    return sample_photos(size=size, crops_per_image=CALIBRATION_CROPS_PER_PHOTO)


def pretrained_tflite(model: str, width: float = 1.0, quantization: str = "float", *,
                      resolution: int | None = None, representative_data=None,
                      progress: bool = True) -> Path:
    """A `.tflite` of a zoo model with ImageNet weights: the published file when the manifest
    lists one for (model, width, quantization), else exported once from the converted weights
    and cached in `$MHMODELS_HOME/tflite/` (int8 / uint8 calibrated on
    `representative_data`, default `default_calibration_images`)."""
    try:
        return weights_lib.download_tflite(model, width, quantization, resolution=resolution,
                                           progress=progress)
    except ValueError as published_error:
        if quantization not in weights_lib.QUANTIZATIONS:
            raise
        try:
            ckpt = weights_lib.find_checkpoint(model, width, weights_lib.LOADABLE_FORMATS,
                                               resolution=resolution)
        except ValueError:
            raise published_error from None
    size = resolution or ckpt.resolution or 224
    calibrated = quantization in ("int8", "uint8")
    tag = "" if not calibrated or representative_data is None else "-custom-calibration"
    target = (weights_lib.cache_dir() / "tflite"
              / f"{model}-w{width:g}-r{size}-imagenet-{quantization}{tag}.tflite")
    if target.is_file() and representative_data is None:
        logger.info("using cached %s", target)
        return target
    built = build(model, width, input_shape=(size, size, 3), weights="imagenet")
    data = None
    if calibrated:
        data = representative_data if representative_data is not None else (
            default_calibration_images(size))
    target.parent.mkdir(parents=True, exist_ok=True)
    export_tflite(built, target, quantization, representative_data=data)
    return target
