"""`python -m mhmodels weights list | fetch <model>`: the published checkpoints, and files
ready for an app.

    python -m mhmodels weights list [--model=mobilenet_v2]
    python -m mhmodels weights fetch multi_avg --format=tflite_int8
    python -m mhmodels weights fetch mobilenet_v2 --width=0.35 --resolution=96 --format=keras

`fetch` prints the path of the cached file. tflite_<q>: the published TFLite file when
zoo/weights.json lists one, else exported once from the converted ImageNet weights (int8 /
uint8 calibrated on `mhmodels.tflite_cache.default_calibration_images`). keras_h5: the published
keras.applications file as downloaded. keras: our own `.weights.h5`, converted once, which
`mhmodels.build(name, weights=<path>)` loads with no conversion.
"""
from __future__ import annotations

import sys

from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_string("model", None, "list: show only this zoo model.")
flags.DEFINE_float("width", 1.0, "fetch: width multiplier of the checkpoint.")
flags.DEFINE_integer("resolution", None, "fetch: input size the checkpoint was trained at "
                     "(default: the largest published).")
flags.DEFINE_enum("format", "tflite_float",
                  ["keras", "keras_h5", "tflite_float", "tflite_dynamic", "tflite_int8",
                   "tflite_uint8"], "fetch: what to produce.")
flags.DEFINE_bool("progress", True, "fetch: show a download progress bar on stderr.")

USAGE = "usage: python -m mhmodels weights list [--model=NAME] | fetch MODEL [--format=...]"


def list_table(model: str | None = None) -> str:
    """The manifest as a table: what exists, how it is verified, how good it is."""
    from mhmodels import weights as W

    rows = [c for c in W.load_manifest() if model is None or c.model == model]
    if model is not None and not rows:
        raise app.UsageError(f"no published checkpoint for {model!r} in {W.manifest_path()}")
    head = (f"{'model':24s} {'width':>5s} {'res':>4s} {'classes':>7s} {'format':12s} "
            f"{'source':19s} {'top-1':>6s} {'input':17s} verified by")
    lines = [head, "-" * len(head)]
    for c in rows:
        top1 = f"{c.top1:.2f}" if c.top1 is not None else "-"
        lines.append(f"{c.model:24s} {c.width:5.2f} {c.resolution or '-':>4} "
                     f"{c.classes or '-':>7} {c.format:12s} {c.source:19s} {top1:>6s} "
                     f"{c.input:17s} {W.pin_status(c)}")
    lines.append(f"{len(rows)} checkpoints ({W.manifest_path()}); top-1 sources and URLs are "
                 "in that file. Unpinned files are checked against the sha256 recorded at "
                 f"their first download ({W.pins_path()}). input: what the file was trained "
                 "on (a published TFLite file takes just that); models that mhmodels.build "
                 "makes from a checkpoint take [-1, 1] (mhmodels.preprocess_input) either way.")
    return "\n".join(lines)


def fetch_file(model: str, width: float, fmt: str, resolution: int | None,
               progress: bool = True):
    """The local path of `fmt` for (model, width, resolution); see the module docstring."""
    from mhmodels import weights as W
    from mhmodels.tflite_cache import pretrained_tflite

    if fmt.startswith("tflite_"):
        return pretrained_tflite(model, width, fmt[len("tflite_"):],
                                 resolution=resolution, progress=progress)
    ckpt = W.find_checkpoint(model, width, W.LOADABLE_FORMATS, resolution=resolution)
    if fmt == "keras_h5":
        if ckpt.format != "keras_h5":
            raise ValueError(f"{ckpt.describe()} is not a keras.applications file")
        return W.fetch_checkpoint(ckpt, progress=progress)
    if ckpt.format == "keras":
        return W.fetch_checkpoint(ckpt, progress=progress)
    if ckpt.input != "minus_one_one":  # a .weights.h5 holds no input layer: it would be lost
        raise ValueError(f"{ckpt.describe()} was trained on {ckpt.input} input; a .weights.h5 "
                         "would not carry the input normalisation layer that build("
                         "weights='imagenet') adds, so none is written: use build(weights="
                         "'imagenet') or --format=tflite_*")
    size = ckpt.resolution or 224
    target = W.cache_dir() / "converted" / f"{model}-w{width:g}-r{size}-imagenet.weights.h5"
    if not target.is_file():
        import mhmodels

        built = mhmodels.build(model, width, input_shape=(size, size, 3), weights="imagenet")
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(".tmp-" + target.name)  # Keras needs the .weights.h5 suffix
        built.save_weights(str(tmp))
        tmp.replace(target)
    return target


def main(argv: list[str]) -> None:
    args = argv[1:]
    if not args or args[0] not in ("list", "fetch"):
        raise app.UsageError(USAGE)
    if args[0] == "list":
        if len(args) != 1:
            raise app.UsageError(USAGE)
        print(list_table(FLAGS.model))
        return
    if len(args) != 2:
        raise app.UsageError("fetch needs exactly one model name; " + USAGE)
    from mhmodels.weights import DownloadError

    try:
        path = fetch_file(args[1], FLAGS.width, FLAGS.format, FLAGS.resolution,
                          progress=FLAGS.progress)
    except DownloadError as err:  # offline, HTTP error: one `error:` line from mhmodels.cli
        raise ValueError(str(err)) from None
    note = published_input_note(args[1], FLAGS.width, FLAGS.format, FLAGS.resolution)
    if note:
        print(note, file=sys.stderr)
    print(path)


def published_input_note(model: str, width: float, fmt: str, resolution: int | None) -> str:
    """A warning line when `fetch` hands over a publisher's TFLite file that takes another
    input than the [-1, 1] of every file exported by mhmodels ('' otherwise)."""
    from mhmodels import weights as W
    from mhmodels.preprocessing import INPUT_CONVENTIONS, MINUS_ONE_ONE

    if not fmt.startswith("tflite_"):
        return ""
    try:
        ckpt = W.find_checkpoint(model, width, fmt, resolution=resolution)
    except ValueError:  # none published: the file was exported from converted weights
        return ""
    if ckpt.input == MINUS_ONE_ONE:
        return ""
    return (f"note: the publisher's file takes {ckpt.input} input "
            f"({INPUT_CONVENTIONS[ckpt.input]}), not mhmodels' [-1, 1]")


if __name__ == "__main__":
    app.run(main)
