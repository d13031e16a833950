"""Run by tools/make_model_garden_fixtures.sh inside the side venv that has tf-models-official.

Builds the Model Garden's MobileNet image classifier (official.vision: MobileNet backbone +
ClassificationModel, the code behind the published TF2 checkpoints) with random values in
every variable (batch-norm statistics included), writes it as a TF2 checkpoint rooted at
`model` like the Model Garden trainer's checkpoints, and saves its logits on real photos
normalised the Model Garden way (ImageNet mean / std on [0, 255] pixels).
"""
from __future__ import annotations

import argparse
import gzip
import json
import os
import shutil
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import tf_keras  # noqa: E402
from official.vision.modeling import classification_model  # noqa: E402
from official.vision.modeling.backbones import mobilenet  # noqa: E402
from official.vision.ops import preprocess_ops  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fixture_values import random_value  # noqa: E402

# (our zoo model, Model Garden model_id, width)
FIXTURES = [("multi_avg", "MobileNetMultiAVG", 0.35), ("multi_max", "MobileNetMultiMAX", 0.35),
            ("mobilenet_edgetpu", "MobileNetV3EdgeTPU", 0.35)]
SIZE, CLASSES = 64, 10


def randomize(model, rng) -> None:
    for var in model.variables:
        var.assign(random_value(var.name.split("/")[-1].split(":")[0], tuple(var.shape), rng,
                                kernel_gain=1.0))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    out = Path(args.out)
    photos = np.load(out / "photos_64.npy")  # [-1, 1]
    pixels = (photos + 1.0) * 127.5
    mg_input = ((pixels - np.array(preprocess_ops.MEAN_RGB)) /
                np.array(preprocess_ops.STDDEV_RGB)).astype(np.float32)
    index = {}
    for i, (ours, model_id, width) in enumerate(FIXTURES):
        tf_keras.backend.clear_session()
        spec = tf_keras.layers.InputSpec(shape=[None, SIZE, SIZE, 3])
        backbone = mobilenet.MobileNet(model_id=model_id, filter_size_scale=width,
                                       input_specs=spec)
        model = classification_model.ClassificationModel(
            backbone=backbone, num_classes=CLASSES, input_specs=spec, dropout_rate=0.2)
        model(tf.zeros([1, SIZE, SIZE, 3]), training=False)
        randomize(model, np.random.default_rng(200 + i))
        logits = model(mg_input, training=False).numpy()
        prefix = out / f"{ours}_ckpt"
        for old in out.glob(f"{ours}_ckpt*"):
            old.unlink()
        path = tf.train.Checkpoint(model=model).write(str(prefix))
        data = Path(path + ".data-00000-of-00001")
        with open(data, "rb") as src, gzip.GzipFile(str(data) + ".gz", "wb", mtime=0) as dst:
            shutil.copyfileobj(src, dst)
        data.unlink()  # the test gunzips it back: byte for byte what the trainer writes
        np.save(out / f"{ours}_logits.npy", logits)
        index[ours] = {"checkpoint": Path(path).name, "model_id": model_id, "width": width,
                       "input_size": SIZE, "classes": CLASSES, "logits": f"{ours}_logits.npy",
                       "input": "ImageNet mean/std on [0, 255] (official.vision preprocess_ops)",
                       "images": f"mhmodels.images.sample_photos(size={SIZE}, crops_per_image=2)",
                       "made_with": f"tf-models-official, tensorflow {tf.__version__}"}
        print(ours, "logits std", float(logits.std()))
        if ours == "mobilenet_edgetpu":
            for name, shape in tf.train.list_variables(path):
                if "weights-2/" in name or "weights-3/" in name:
                    print("  ", name, shape)
    (out / "index.json").write_text(json.dumps(index, indent=2) + "\n")


if __name__ == "__main__":
    main()
