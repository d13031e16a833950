"""Run inside the Model Garden side venv: MobileNet-EdgeTPU-V2 counts from the publisher's code.

    /tmp/mhmodels-mg-venv/bin/python tools/make_edgetpu_v2_fixtures.py \
        --edgetpu_src=/path/to/models --out=tests/fixtures/model_garden

The tf-models-official wheel leaves out official/projects/edgetpu, so `--edgetpu_src` is a
directory holding `official/projects/edgetpu/vision/modeling/` from a tensorflow/models
checkout (mobilenet_edgetpu_v2_model_blocks.py, custom_layers.py, common_modules.py); it is
added to the installed `official.projects` package. Each of tiny / XS / S / M / L is built
the way `MobilenetEdgeTPUV2.from_name` builds it (224x224, 1001 classes), and every
convolution (grouped ones included: `GroupConv2D` keeps one kernel per group) is written as
(kind, output shape, params, MAdds) in network order, with the totals, to
`edgetpu_v2_counts.json`. The counting convention is the project's (kernels + biases, batch
norm excluded; MAdds = kernel size x output pixels).
"""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ["TF_USE_LEGACY_KERAS"] = "1"  # the Model Garden's layers are Keras 2 layers

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

SIZES = ("tiny", "xs", "s", "m", "l")


def conv_rows(model) -> list[dict]:
    rows = []
    for layer in model.layers:
        kind = type(layer).__name__
        if kind not in ("Conv2D", "DepthwiseConv2D", "GroupConv2D"):
            continue
        kernel = getattr(layer, "depthwise_kernel", None)
        kernel = layer.kernel if kernel is None else kernel
        kernels = kernel if isinstance(kernel, list) else [kernel]
        weights = sum(int(np.prod(k.shape)) for k in kernels)
        bias = int(np.prod(layer.bias.shape)) if layer.use_bias and not isinstance(
            layer.bias, list) else sum(int(np.prod(b.shape)) for b in (layer.bias or []))
        shape = [int(d) for d in layer.output.shape[1:]]
        rows.append({"name": layer.name, "kind": "depthwise" if kind == "DepthwiseConv2D"
                     else "conv", "groups": int(getattr(layer, "_groups", 1)),
                     "output_shape": shape, "params": weights + bias,
                     "madds": weights * shape[0] * shape[1]})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--edgetpu_src", required=True)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    import official.projects
    official.projects.__path__.append(str(Path(args.edgetpu_src) / "official" / "projects"))
    from official.projects.edgetpu.vision.modeling import (
        mobilenet_edgetpu_v2_model_blocks as blocks)

    out = {}
    for size in SIZES:
        tf.keras.backend.clear_session()
        config = getattr(blocks, f"mobilenet_edgetpu_v2_{size}")()
        image = tf.keras.layers.Input(shape=(224, 224, 3))
        model = tf.keras.Model(image, blocks.mobilenet_edgetpu_v2(image, config))
        rows = conv_rows(model)
        out[f"mobilenet_edgetpu_v2_{size}"] = {
            "params": sum(r["params"] for r in rows), "madds": sum(r["madds"] for r in rows),
            "group_base_size": config.group_base_size, "rescale_input": config.rescale_input,
            "layers": rows}
        print(size, out[f"mobilenet_edgetpu_v2_{size}"]["params"],
              out[f"mobilenet_edgetpu_v2_{size}"]["madds"], len(rows))
    out["made_with"] = (f"tensorflow {tf.__version__}, tf-models-official, "
                        "official/projects/edgetpu/vision/modeling at tensorflow/models 00d83f37")
    (Path(args.out) / "edgetpu_v2_counts.json").write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
