"""The few block kinds, written once against a Keras module passed in as `k`.

`k` is either Keras 3 (`import keras`) or tf_keras (Keras 2, needed by tfmot for QAT). Only
layers that exist with the same arguments in both are used, and every layer gets a
deterministic name, so weights copy between the two builds by name.

Hard-sigmoid is built from Rescaling(+3) -> ReLU6 -> Rescaling(1/6) rather than a Lambda or
`Activation('hard_sigmoid')`: these are standard layers that both front-ends serialise, that
TFLite lowers to ADD/RELU6/MUL, and that tfmot can be given a quantize config for.
"""
from __future__ import annotations

from types import ModuleType
from typing import Any

from mhmodels.grouped_forms import layer_form
from mhmodels.spec import LayerSpec

BN_EPSILON = 1e-3
BN_MOMENTUM = 0.99

Tensor = Any  # a symbolic Keras tensor of either front-end


def conv_init(k: ModuleType):
    """He-style fan-out init (as TF's MobileNets): keeps activations O(1) through deep stacks."""
    return k.initializers.VarianceScaling(scale=2.0, mode="fan_out",
                                          distribution="truncated_normal")


def dense_init(k: ModuleType):
    """Glorot (fan-average): fan-out scaling would give logits of std ~5 for 10 classes."""
    return k.initializers.GlorotUniform()


def channels(x: Tensor) -> int:
    return int(x.shape[-1])


def activation(k: ModuleType, x: Tensor, kind: str, name: str) -> Tensor:
    if kind == "linear":
        return x
    if kind == "relu":
        return k.layers.ReLU(name=f"{name}_relu")(x)
    if kind == "relu6":
        return k.layers.ReLU(max_value=6.0, name=f"{name}_relu6")(x)
    if kind == "hard_swish":
        return k.layers.Multiply(name=f"{name}_hswish")([x, hard_sigmoid(k, x, name)])
    raise ValueError(f"unknown activation {kind!r}")


def hard_sigmoid(k: ModuleType, x: Tensor, name: str) -> Tensor:
    """relu6(x + 3) / 6, the MobileNetV3 gate."""
    x = k.layers.Rescaling(1.0, offset=3.0, name=f"{name}_hsig_shift")(x)
    x = k.layers.ReLU(max_value=6.0, name=f"{name}_hsig_relu6")(x)
    return k.layers.Rescaling(1.0 / 6.0, name=f"{name}_hsig_scale")(x)


def conv_bn(k: ModuleType, x: Tensor, filters: int, kernel: int, stride: int, act: str,
            name: str, use_bias: bool = False, batch_norm: bool = True) -> Tensor:
    x = k.layers.Conv2D(filters, kernel, strides=stride, padding="same", use_bias=use_bias,
                        kernel_initializer=conv_init(k), name=name)(x)
    if batch_norm:
        x = k.layers.BatchNormalization(epsilon=BN_EPSILON, momentum=BN_MOMENTUM,
                                        name=f"{name}_bn")(x)
    return activation(k, x, act, name)


def depthwise_bn(k: ModuleType, x: Tensor, kernel: int, stride: int, act: str,
                 name: str) -> Tensor:
    x = k.layers.DepthwiseConv2D(kernel, strides=stride, padding="same", use_bias=False,
                                 depthwise_initializer=conv_init(k), name=name)(x)
    x = k.layers.BatchNormalization(epsilon=BN_EPSILON, momentum=BN_MOMENTUM,
                                    name=f"{name}_bn")(x)
    return activation(k, x, act, name)


def grouped_conv_bn(k: ModuleType, x: Tensor, filters: int, kernel: int, stride: int,
                    groups: int, act: str, name: str, form: str = "native") -> Tensor:
    """KxK grouped conv -> BN -> act, as one Conv2D(groups=) or, with `form='split'`, as
    split -> (conv -> BN -> act) per group -> concat: group i is `{name}_g{i}` (+ `_bn`) and
    holds output channels [i*filters/groups, (i+1)*filters/groups) of the native layers.

    The same function either way. The split form keeps BN and activation inside each group
    (as the Model Garden's GroupConv2D does) so that every CONV_2D fuses its ReLU and tfmot
    folds each BN; its channel split is a `ChannelSplit` layer (one SPLIT op in TFLite).
    A per-layer `form` ('auto:u85') picks one of the two for this conv from its geometry
    (`mhmodels.grouped_forms.layer_form`, which the direct TFLite writer asks too).
    """
    form = layer_form(form, height=x.shape[1], in_channels=channels(x), out_channels=filters,
                      groups=groups, kernel=kernel, stride=stride)
    if form == "native" or groups == 1:
        x = k.layers.Conv2D(filters, kernel, strides=stride, padding="same", use_bias=False,
                            groups=groups, kernel_initializer=conv_init(k), name=name)(x)
        x = k.layers.BatchNormalization(epsilon=BN_EPSILON, momentum=BN_MOMENTUM,
                                        name=f"{name}_bn")(x)
        return activation(k, x, act, name)
    parts = channel_split_class(k)(groups, name=f"{name}_split")(x)
    parts = [conv_bn(k, part, filters // groups, kernel, stride, act, f"{name}_g{i}")
             for i, part in enumerate(parts)]
    return k.layers.Concatenate(name=f"{name}_concat")(parts)


_CHANNEL_SPLIT: dict[str, type] = {}


def channel_split_class(k: ModuleType) -> type:
    """The `ChannelSplit` layer class of front-end `k` (`tf.split` on channels into `groups`
    equal parts), registered as serializable so that cloning (tfmot's QAT) rebuilds it."""
    key = k.__name__
    if key not in _CHANNEL_SPLIT:
        @k.utils.register_keras_serializable(package="mhmodels")
        class ChannelSplit(k.layers.Layer):
            def __init__(self, groups: int, **kwargs):
                super().__init__(**kwargs)
                self.groups = int(groups)

            def call(self, inputs):
                import tensorflow as tf
                return tf.split(inputs, self.groups, axis=-1)

            def compute_output_shape(self, input_shape):
                shape = list(input_shape)
                shape[-1] = None if shape[-1] is None else shape[-1] // self.groups
                return [tuple(shape)] * self.groups

            def get_config(self):
                return {**super().get_config(), "groups": self.groups}

        _CHANNEL_SPLIT[key] = ChannelSplit
    return _CHANNEL_SPLIT[key]


def squeeze_excite(k: ModuleType, x: Tensor, squeeze: int, name: str) -> Tensor:
    """SE with a hard-sigmoid gate; `squeeze` is the bottleneck width."""
    s = k.layers.GlobalAveragePooling2D(keepdims=True, name=f"{name}_pool")(x)
    s = k.layers.Conv2D(squeeze, 1, use_bias=True, kernel_initializer=conv_init(k),
                        name=f"{name}_reduce")(s)
    s = k.layers.ReLU(name=f"{name}_reduce_relu")(s)
    s = k.layers.Conv2D(channels(x), 1, use_bias=True, kernel_initializer=conv_init(k),
                        name=f"{name}_expand")(s)
    s = hard_sigmoid(k, s, f"{name}_gate")
    return k.layers.Multiply(name=f"{name}_scale")([x, s])


def block(k: ModuleType, x: Tensor, layer: LayerSpec, filters: int, hidden: int,
          se_squeeze: int | None, name: str, groups: int | None = None,
          grouped_conv: str = "native") -> Tensor:
    """One body block with channel counts already resolved for the width multiplier.

    `groups` (from `LayerSpec.group_size`) makes the KxK conv of an ibn / fused_ibn grouped,
    written in the `grouped_conv` form ('native', 'split' or per layer, e.g. 'auto:u85').
    """
    if layer.kind == "conv":
        return conv_bn(k, x, filters, layer.kernel, layer.stride, layer.activation, name,
                       layer.use_bias, layer.batch_norm)
    if layer.kind == "ds":
        x = depthwise_bn(k, x, layer.kernel, layer.stride, layer.activation, f"{name}_dw")
        return conv_bn(k, x, filters, 1, 1, layer.activation, f"{name}_pw")

    # As in the reference implementations, expansion 1 skips the expansion layer: for ibn the
    # 1x1 expand, for fused_ibn the KxK conv (leaving only the projection).
    shortcut = x
    h = x
    if layer.kind == "fused_ibn":
        if layer.expansion != 1 and groups is not None:
            h = grouped_conv_bn(k, h, hidden, layer.kernel, layer.stride, groups,
                                layer.activation, f"{name}_fused", grouped_conv)
        elif layer.expansion != 1:
            h = conv_bn(k, h, hidden, layer.kernel, layer.stride, layer.activation, f"{name}_fused")
    else:  # ibn
        if layer.expansion != 1:
            h = conv_bn(k, h, hidden, 1, 1, layer.activation, f"{name}_expand")
        if groups is not None:
            h = grouped_conv_bn(k, h, hidden, layer.kernel, layer.stride, groups,
                                layer.activation, f"{name}_group", grouped_conv)
        else:
            h = depthwise_bn(k, h, layer.kernel, layer.stride, layer.activation, f"{name}_dw")
    if se_squeeze is not None:
        h = squeeze_excite(k, h, se_squeeze, f"{name}_se")
    h = conv_bn(k, h, filters, 1, 1, "linear", f"{name}_project")
    if layer.residual and layer.stride == 1 and channels(shortcut) == filters:
        h = k.layers.Add(name=f"{name}_add")([shortcut, h])
    return h
