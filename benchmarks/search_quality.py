"""Search quality: the searched architecture vs the best of K random ones at matched f_max.

    python benchmarks/search_quality.py --entry=<zoo entry> [--k=5] [--train_steps=800] \
        [--tolerance=0.1] [--width=0.25] [--image_size=32] [--json=out.json]

Random architectures of the space are drawn until K of them have a predicted (cost-model)
f_max within --tolerance (relative) of the entry's; the entry and the K are then trained the
same way (mhmodels.build at --width, digits search_train, momentum SGD, --train_steps) and
evaluated on the digits validation split. A search that works beats (or matches) the best
random architecture at the same worst-case latency.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from absl import app, flags

from _report import quiet_logs, write_json  # benchmarks/_report.py; defines --json

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

flags.DEFINE_string("entry", None, "Zoo entry emitted by python -m search.")
flags.DEFINE_integer("k", 5, "Random architectures at matched f_max.")
flags.DEFINE_float("tolerance", 0.1, "Relative f_max tolerance of the match.")
flags.DEFINE_integer("train_steps", 800, "Training steps per architecture.")
flags.DEFINE_integer("batch_size", 32, "Training batch size.")
flags.DEFINE_float("learning_rate", 0.05, "Momentum SGD learning rate (cosine decay).")
flags.DEFINE_float("width", 0.25, "Width multiplier the architectures are trained at.")
flags.DEFINE_integer("image_size", 32, "Image size.")
flags.DEFINE_list("hardware", ["cpu_float", "cpu_int8", "cpu_ref_float"], "Cost models.")
flags.DEFINE_string("cost_model_dir", None, "Cost-model directory (default: shipped).")
flags.DEFINE_integer("seed", 0, "Seed of the random architectures and training.")
flags.mark_flag_as_required("entry")
FLAGS = flags.FLAGS


def train_and_eval(spec, steps, seed):
    import keras
    import tensorflow as tf

    import mhmodels
    from mhmodels.data import make_dataset
    keras.utils.set_random_seed(seed)
    model = mhmodels.build(spec, FLAGS.width, input_shape=(FLAGS.image_size,) * 2 + (3,),
                           num_classes=10, dropout=0.0)
    schedule = keras.optimizers.schedules.CosineDecay(FLAGS.learning_rate, steps)
    model.compile(keras.optimizers.SGD(schedule, momentum=0.9),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    train = make_dataset("digits", "search_train", image_size=FLAGS.image_size,
                         batch_size=FLAGS.batch_size, training=True, seed=seed).take(steps)
    model.fit(train, epochs=1, verbose=0)
    valid = make_dataset("digits", "validation", image_size=FLAGS.image_size, batch_size=128,
                         training=False)
    return float(model.evaluate(valid, verbose=0)[1])


def main(argv):
    quiet_logs()
    import mhmodels
    from mhmodels.metrics import f_max
    from search.loop import load_cost_models
    from search.space import get_space

    space = get_space("multi_hw")
    cms = load_cost_models(FLAGS.hardware, space, FLAGS.cost_model_dir)
    normalizers = [float(c.normalizer_ms) for c in cms]

    def fmax(choices):
        lat = np.array([float(np.asarray(c.predict(np.asarray(choices)[None])).reshape(-1)[0])
                        for c in cms])
        return float(f_max(lat, normalizers))

    spec = mhmodels.get_spec(FLAGS.entry)
    target = fmax(space.choices_for(spec))
    rng = np.random.default_rng(FLAGS.seed)
    matched = []
    for _ in range(200_000):
        c = space.sample(rng)
        if abs(fmax(c) / target - 1.0) <= FLAGS.tolerance:
            matched.append(c)
            if len(matched) == FLAGS.k:
                break
    results = {"entry": FLAGS.entry, "entry_f_max": target,
               "entry_accuracy": train_and_eval(spec, FLAGS.train_steps, FLAGS.seed),
               "random": []}
    print(f"{FLAGS.entry}: f_max {target:.3f}, accuracy {results['entry_accuracy']:.4f}",
          flush=True)
    for i, c in enumerate(matched):
        acc = train_and_eval(space.decode(c, f"random_{i}"), FLAGS.train_steps, FLAGS.seed)
        results["random"].append({"key": space.encode(c), "f_max": fmax(c), "accuracy": acc})
        print(f"random {i}: f_max {fmax(c):.3f}, accuracy {acc:.4f}", flush=True)
    best = max((r["accuracy"] for r in results["random"]), default=float("nan"))
    results["best_random_accuracy"] = best
    print(f"searched {results['entry_accuracy']:.4f} vs best of {len(matched)} random "
          f"{best:.4f} at f_max {target:.3f} +- {100 * FLAGS.tolerance:.0f}%")
    write_json(results)
    return 0


if __name__ == "__main__":
    app.run(main)
