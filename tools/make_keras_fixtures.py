"""Write the keras.applications fixtures of tests/fixtures/keras_applications/.

Why: the converters in mhmodels/pretrained.py must be proven on the publisher's own files, and
the real ImageNet files cannot be downloaded here. So this script builds each MobileNet with the
publisher's own code (tf_keras.applications: the Keras 2 code that wrote the published .h5
files, with their layer names) and weights=None, gives *every* variable random values (batch-norm
statistics included: the default gamma=1, beta=0, mean=0, var=1 would hide a mix-up of them),
and saves it with Keras 2's `save_weights` to the legacy HDF5 format that keras.applications
downloads, under the name keras would give that file. Beside each file it stores the logits the
publisher's model gives on real photos (scikit-learn's sample photos, [-1, 1] input).

Small widths, resolutions and (except for one published-size MobileNetV1 file) 10-class heads
keep the files small. The random values lie on a grid of 64 levels per tensor so that gzip
shrinks the committed `.h5.gz` about 4x; the tests gunzip them to get the exact published format.

    venv/bin/python tools/make_keras_fixtures.py [--out tests/fixtures/keras_applications]
"""
from __future__ import annotations

import argparse
import gzip
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from fixture_values import random_value  # noqa: E402

# (fixture id, keras.applications function, kwargs, published-style file name)
FIXTURES = [
    ("mobilenet_v1", "MobileNet", dict(alpha=0.25, input_shape=(128, 128, 3), classes=1000),
     "mobilenet_2_5_128_tf.h5"),
    ("mobilenet_v2", "MobileNetV2", dict(alpha=0.35, input_shape=(96, 96, 3), classes=10),
     "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.35_96.h5"),
    ("mobilenet_v3_large", "MobileNetV3Large",
     dict(alpha=0.35, input_shape=(64, 64, 3), classes=10),
     "weights_mobilenet_v3_large_224_0.35_float.h5"),
    ("mobilenet_v3_large_min", "MobileNetV3Large",
     dict(alpha=0.35, input_shape=(64, 64, 3), classes=10, minimalistic=True),
     "weights_mobilenet_v3_large_minimalistic_224_0.35_float.h5"),
    ("mobilenet_v3_small", "MobileNetV3Small",
     dict(alpha=0.5, input_shape=(64, 64, 3), classes=10),
     "weights_mobilenet_v3_small_224_0.5_float.h5"),
]


def randomize(model, rng: np.random.Generator) -> None:
    """Random values for every variable (tools/fixture_values.py), He-style kernels."""
    for layer in model.layers:
        values = [random_value(var.name.split("/")[-1].split(":")[0], tuple(var.shape), rng,
                               kernel_gain=2.0) for var in layer.weights]
        if values:
            layer.set_weights(values)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="tests/fixtures/keras_applications")
    args = parser.parse_args()
    import tf_keras

    from mhmodels.images import sample_photos

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    index = {}
    for i, (model_id, fn_name, kwargs, file_name) in enumerate(FIXTURES):
        tf_keras.backend.clear_session()
        fn = getattr(tf_keras.applications, fn_name)
        extra = {"include_preprocessing": False} if "V3" in fn_name else {}
        model = fn(weights=None, classifier_activation=None, **kwargs, **extra)
        randomize(model, np.random.default_rng(100 + i))
        size = kwargs["input_shape"][0]
        images = sample_photos(size=size, crops_per_image=2)  # 4 real photo crops in [-1, 1]
        logits = model.predict(images, verbose=0)
        with tempfile.TemporaryDirectory() as tmp:
            h5 = Path(tmp) / file_name
            model.save_weights(str(h5))  # Keras 2 legacy HDF5, as the published files
            with open(h5, "rb") as src, gzip.GzipFile(out / (file_name + ".gz"), "wb",
                                                      mtime=0) as dst:
                shutil.copyfileobj(src, dst)
        np.save(out / (model_id + "_logits.npy"), logits.astype(np.float32))
        index[model_id] = {"file": file_name + ".gz", "function": fn_name,
                           "alpha": kwargs["alpha"], "input_size": size,
                           "classes": kwargs["classes"],
                           "minimalistic": bool(kwargs.get("minimalistic", False)),
                           "logits": model_id + "_logits.npy",
                           "images": f"mhmodels.images.sample_photos(size={size}, "
                                     "crops_per_image=2)",
                           "made_with": f"tf_keras {tf_keras.__version__}"}
        print(f"{model_id}: {file_name} logits std {logits.std():.3f}")
    (out / "index.json").write_text(json.dumps(index, indent=2) + "\n")


if __name__ == "__main__":
    main()
