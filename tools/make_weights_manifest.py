"""Write zoo/weights.json: every published ImageNet checkpoint of a zoo model we know of.

Why a script: the table is long and regular (keras.applications publishes MobileNetV1 at 4
widths x 4 resolutions and MobileNetV2 at 6 x 5), and each field has one source, named here:
- keras.applications file names, URLs and (MobileNetV3 only) md5 hashes: keras' own source
  (keras/src/applications/mobilenet*.py); 1000 classes, input [-1, 1], legacy Keras 2 HDF5.
  keras' code also names V2 files at widths 1.3 / 1.4 below 224 px; TF-slim published those
  widths at 224 only, so they are left out (unverified here).
  keras publishes no sha256 and no hash at all for V1/V2: those files are unpinned (their
  first download's sha256 is recorded; see mhmodels.weights).
- top-1: keras' MobileNetV3 docstring for V3; for V1/V2, whose keras files carry no accuracy,
  the TF-slim tables of the same width and resolution (research/slim/nets/mobilenet_v1.md and
  mobilenet/README.md in tensorflow/models).
- TFLite int8 (QAT) files and their top-1: the Model Garden's QAT README
  (official/projects/qat/vision/README.md); 1001 classes; input ImageNet mean / std (its TFLite
  export skips the serving preprocessing: official/vision/serving/image_classification.py).
- `input`: what each file was trained on / takes (mhmodels.preprocessing.INPUT_CONVENTIONS).
- No Model Garden float checkpoint (tf_checkpoint) is listed: its docs and configs name none
  for Multi-AVG / Multi-MAX / MobileNet-EdgeTPU as a downloadable file (the QAT configs'
  `pretrained_original_checkpoint` paths are redacted, 'gs://**/...'; the segmentation config's
  'gs://tf_model_garden/vision/mobilenet/v3.5multiavg_seg_float/' is a folder whose file names
  are not published). mhmodels loads such a checkpoint from its local files only.

    python tools/make_weights_manifest.py      # rewrites zoo/weights.json
"""
from __future__ import annotations

import json
from pathlib import Path

KERAS = "https://storage.googleapis.com/tensorflow/keras-applications/"
SLIM_V1 = "TF-slim mobilenet_v1.md (same width/resolution; keras gives no per-file accuracy)"
SLIM_V2 = "TF-slim mobilenet/README.md (same width/resolution; keras gives no per-file accuracy)"
KERAS_V3 = "keras.applications MobileNetV3 docstring"
QAT = "TF Model Garden official/projects/qat/vision/README.md (QAT int8)"

V1_TOP1 = {  # (width, resolution) -> top-1
    (1.0, 224): 70.9, (1.0, 192): 70.0, (1.0, 160): 68.0, (1.0, 128): 65.2,
    (0.75, 224): 68.4, (0.75, 192): 67.2, (0.75, 160): 65.3, (0.75, 128): 62.1,
    (0.5, 224): 63.3, (0.5, 192): 61.7, (0.5, 160): 59.1, (0.5, 128): 56.3,
    (0.25, 224): 49.8, (0.25, 192): 47.7, (0.25, 160): 45.5, (0.25, 128): 41.5,
}
V2_TOP1 = {
    (1.4, 224): 75.0, (1.3, 224): 74.4,
    (1.0, 224): 71.8, (1.0, 192): 70.7, (1.0, 160): 68.8, (1.0, 128): 65.3, (1.0, 96): 60.3,
    (0.75, 224): 69.8, (0.75, 192): 68.7, (0.75, 160): 66.4, (0.75, 128): 63.2, (0.75, 96): 58.8,
    (0.5, 224): 65.4, (0.5, 192): 63.9, (0.5, 160): 61.0, (0.5, 128): 57.7, (0.5, 96): 51.2,
    (0.35, 224): 60.3, (0.35, 192): 58.2, (0.35, 160): 55.7, (0.35, 128): 50.8, (0.35, 96): 45.5,
}
V3 = [  # (zoo model, keras model name, width, md5 of the include_top file, top-1)
    ("mobilenet_v3_large", "large", 0.75, "765b44a33ad4005b3ac83185abf1d0eb", 73.3),
    ("mobilenet_v3_large", "large", 1.0, "59e551e166be033d707958cf9e29a6a7", 75.6),
    ("mobilenet_v3_large_min", "large_minimalistic", 1.0, "675e7b876c45c57e9e63e6d90a36599c",
     72.3),
    ("mobilenet_v3_small", "small", 0.75, "cb65d4e5be93758266aa0a7f2c6708b7", 65.4),
    ("mobilenet_v3_small", "small", 1.0, "8768d4c2e7dee89b9d02b2d03d65d862", 68.1),
]


def keras_entry(model, width, resolution, url, top1, top1_source, md5=None):
    return {"model": model, "width": width, "resolution": resolution, "format": "keras_h5",
            "dataset": "imagenet", "classes": 1000, "source": "keras_applications",
            "input": "minus_one_one", "url": url, "sha256": None, "md5": md5, "size": None,
            "top1": top1, "top1_source": top1_source}


def main() -> None:
    entries = []
    v1_alpha = {1.0: "1_0", 0.75: "7_5", 0.5: "5_0", 0.25: "2_5"}
    for (width, res), top1 in V1_TOP1.items():
        url = f"{KERAS}mobilenet/mobilenet_{v1_alpha[width]}_{res}_tf.h5"
        entries.append(keras_entry("mobilenet_v1", width, res, url, top1, SLIM_V1))
    for (width, res), top1 in V2_TOP1.items():
        url = (f"{KERAS}mobilenet_v2/mobilenet_v2_weights_tf_dim_ordering_tf_kernels_"
               f"{float(width)}_{res}.h5")
        entries.append(keras_entry("mobilenet_v2", width, res, url, top1, SLIM_V2))
    for model, name, width, md5, top1 in V3:
        url = f"{KERAS}mobilenet_v3/weights_mobilenet_v3_{name}_224_{width}_float.h5"
        entries.append(keras_entry(model, width, 224, url, top1, KERAS_V3, md5))
    for model, url, top1 in [
        ("mobilenet_v2", "https://storage.googleapis.com/tf_model_garden/vision/mobilenet/"
         "v2_1.0_int8/mobilenet_v2_1.00_224_int8.tflite", 72.79),
        ("multi_avg", "https://storage.googleapis.com/tf_model_garden/vision/mobilenet/"
         "v3.5multiavg_1.0_int8/mobilenet_v3.5multiavg_1.00_224_int8.tflite", 75.13),
    ]:
        entries.append({"model": model, "width": 1.0, "resolution": 224,
                        "format": "tflite_int8", "dataset": "imagenet", "classes": 1001,
                        "source": "model_garden", "input": "imagenet_mean_std",
                        "url": url, "sha256": None, "md5": None,
                        "size": None, "top1": top1, "top1_source": QAT})
    entries.sort(key=lambda e: (e["model"], e["format"], e["width"], e["resolution"]))
    out = Path(__file__).resolve().parent.parent / "zoo" / "weights.json"
    lines = ",\n".join("    " + json.dumps(e) for e in entries)
    out.write_text('{\n  "format_version": 1,\n  "checkpoints": [\n' + lines + "\n  ]\n}\n")
    print(f"wrote {len(entries)} checkpoints to {out}")


if __name__ == "__main__":
    main()
