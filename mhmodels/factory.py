"""The public `mhmodels.build`: a zoo name (or a spec) -> a Keras model, with pretrained
weights and multi-scale features. The top floor of the package (timm keeps `create_model` in
`_factory` the same way, above its registry and builders): it uses the registry (names ->
specs), the builder (spec -> model), the pretrained loading path and the features, and none of
them uses it.
"""
from __future__ import annotations

import os
from typing import Sequence

from mhmodels import pretrained
from mhmodels.builder import build_model
from mhmodels.features import DEFAULT_OUT_INDICES, feature_extractor, strides_of
from mhmodels.registry import get_spec
from mhmodels.spec import ModelSpec


def build(spec_or_name: str | ModelSpec, /, width: float = 1.0, *,
          input_shape: Sequence[int | None] | None = None, num_classes: int | None = None,
          classes: int | None = None, include_top: bool = True, pooling: str | None = None,
          dropout: float = 0.2, classifier_activation: str | None = None,
          weights: str | os.PathLike | None = None, input_tensor=None, name: str | None = None,
          frontend: str = "keras", features_only: bool = False,
          out_indices: Sequence[int] | None = None):
    """Build a zoo model (or a `ModelSpec`) as a Keras model, following keras.applications.

    Inputs are RGB images scaled to [-1, 1] (`mhmodels.preprocess_input` maps [0, 255]
    pixels there), channels_last (NHWC); a global `channels_first` setting is refused.

    Args:
      spec_or_name: a zoo name (`list_models()`) or a `ModelSpec` (positional).
      width: width multiplier (1.0 = the published network).
      input_shape: (height, width, 3); default (224, 224, 3), or the shape of
        `input_tensor`. (None, None, 3) for fully convolutional use needs include_top=False.
      num_classes: classifier outputs, default 1001 (ImageNet with background); `classes`
        is the keras.applications alias.
      include_top: end with pooling, dropout and the classifier; else the feature map
        before global pooling, pooled per `pooling` (None, 'avg' or 'max').
      dropout: rate of the dropout before the classifier.
      classifier_activation: None gives logits (float32 even under mixed precision).
      weights: None (random), 'imagenet', a local `.weights.h5` / keras.applications `.h5` /
        Model Garden checkpoint `.index` path or a URL; 'imagenet' takes the class layout and
        exact network of the published checkpoint, or refuses with the reason (see
        `mhmodels.pretrained`). A checkpoint trained on another input than [-1, 1] gets a
        fixed 'input_normalization' first layer, so the model still takes [-1, 1].
      input_tensor: build on this tensor (e.g. another model's output) instead of a new Input.
      name: the Keras model's name; default `<spec name>_<width>_<size>`, e.g.
        'multi_max_1.00_224' (two widths of one network can then share a Keras graph).
      frontend: 'keras' (Keras 3) or 'tf_keras' (the Keras 2 twin used for QAT).
      features_only: return a backbone whose outputs are feature maps (timm's
        `features_only`): the last block's output at each output stride picked by
        `out_indices`, shallowest first; include_top, pooling and the classifier do not apply.
        (None, None, 3) inputs are allowed. Pretrained `weights` load the same way.
      out_indices: feature levels, timm style: level i has output stride 2**(i+1) in the zoo's
        networks (0 = the stem, 4 = stride 32); default (1, 2, 3, 4), the stride 4/8/16/32
        maps of FPN / SSD / DeepLab heads. Only with features_only=True.

    Returns:
      A `keras.Model` (tf_keras with frontend='tf_keras'); with features_only, one whose
      outputs are the list of feature maps.
    Raises:
      ValueError: an unknown model (with close-name suggestions), or bad arguments (width,
        input shape, classes, pooling, dropout, data format; the message names the problem).
      SpecError: a malformed zoo entry.
    """
    include_top, num_classes = _check_options(features_only, out_indices, pooling,
                                              include_top, num_classes, classes)
    spec = spec_or_name if isinstance(spec_or_name, ModelSpec) else get_spec(spec_or_name)
    strides = strides_of(spec, DEFAULT_OUT_INDICES if out_indices is None else out_indices
                         ) if features_only else None
    loader = None
    if weights is not None:  # the checkpoint decides the class layout and exact network
        loader = _prepare_weights(spec, width, weights, input_shape, input_tensor, include_top,
                                  num_classes)
        spec, num_classes = loader.spec, loader.num_classes
    num_classes = 1001 if num_classes is None else num_classes
    normalization = loader.input_normalization if loader is not None else None
    model = build_model(spec, width, input_shape=input_shape, num_classes=num_classes,
                        include_top=include_top, pooling=pooling, dropout=dropout,
                        classifier_activation=classifier_activation, frontend=frontend,
                        name=name, input_tensor=input_tensor, input_normalization=normalization)
    if loader is not None:
        loader.load(model, lambda: build_model(spec, width, num_classes=num_classes,
                                               frontend=frontend,
                                               input_normalization=normalization))
    if features_only:
        return feature_extractor(model, strides, name=name or f"{model.name}_features")
    return model


def _check_options(features_only: bool, out_indices, pooling, include_top: bool,
                   num_classes: int | None, classes: int | None) -> tuple[bool, int | None]:
    """Refuse arguments that contradict each other. -> (include_top, num_classes): no top
    for feature maps; `classes` is the keras.applications alias of num_classes."""
    if out_indices is not None and not features_only:
        raise ValueError("out_indices picks feature maps: pass features_only=True with it")
    if features_only:
        if pooling is not None:
            raise ValueError("features_only=True returns feature maps; pooling does not apply")
        include_top = False
    if num_classes is not None and classes is not None and num_classes != classes:
        raise ValueError(f"num_classes={num_classes} and classes={classes} disagree; pass one")
    return include_top, (num_classes if num_classes is not None else classes)


def _prepare_weights(spec: ModelSpec, width: float, weights, input_shape, input_tensor,
                     include_top: bool, num_classes: int | None):
    """`pretrained.prepare` at the fixed input size the model will have (224 for a
    dynamic one): the loader that fixes the spec, class count and input normalisation."""
    shape = tuple(input_shape) if input_shape is not None else (
        tuple(input_tensor.shape[1:]) if input_tensor is not None else (224, 224, 3))
    shape = tuple(224 if d is None else int(d) for d in shape[:2]) + (3,)
    return pretrained.prepare(spec, width, weights, input_shape=shape,
                              include_top=include_top, num_classes=num_classes)
