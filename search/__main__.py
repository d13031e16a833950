"""`python -m search`: a TuNAS-style multi-hardware architecture search that emits a zoo entry.

    python -m search --model_dir=runs/demo       # digits, cpu_float+cpu_int8+ethos_u55+ethos_u85, f_max
    python -m search --hardware=cpu_float,cpu_int8 --metric=avg --steps=3000 \\
        --model_dir=runs/avg --entry_name=my_multi_avg
    python -m search --strategy=mirrored --num_cpu_devices=2 --model_dir=runs/mirrored
    python -m search --strategy=tpu --tpu=my-tpu --dataset=imagenet2012 --data_dir=gs://... \\
        --image_size=224 --batch_size=128 --epochs=360 --supernet_width=1.0 \\
        --rl_delay_fraction=0.5 --learning_rate=0.04125 --model_dir=gs://.../search

Re-running with the same --model_dir resumes from its latest checkpoint (same flags required);
re-running a finished search reports its entry. At the end the argmax architecture is written
to <zoo_dir>/<entry_name>.json (default zoo_dir: $MHMODELS_HOME/zoo/models, listed by
mhmodels); then (unless --nomeasure) it is built at 224x224 with `mhmodels.build`, exported to
TFLite and timed on every measurable hardware beside the --compare models.
"""
from __future__ import annotations

import logging
import os
import sys
import time

from absl import flags

from mhmodels import cli
from mhmodels.locking import check_unlocked, is_chief_task

FLAGS = flags.FLAGS
DEFAULT_STEPS = 1000  # lands on T at 600 (docs/search_target.md); a 4x held-out batch costs time

flags.DEFINE_list("hardware", ["cpu_float", "cpu_int8", "ethos_u55", "ethos_u85"],
                  "Comma-separated hardware to optimise for (search.hardware names: cpu_float, "
                  "cpu_int8, cpu_ref_float, ethos_u55, ethos_u65, ethos_u85, "
                  "vela:<accelerator>:<system>:<memory_mode>, csv:<path>); each needs a "
                  "fitted cost model.")
flags.DEFINE_enum("metric", "max", ["single", "avg", "max"],
                  "Latency metric in the reward: single (one hardware, TuNAS), avg = f_avg "
                  "(paper eq. 7), max = f_max (paper eq. 8).")
flags.DEFINE_float("beta", None, "Reward latency coefficient beta (< 0): r = A + beta*|f/T-1|. "
                   "Default: the paper's -0.07 scaled to the held-out batch's accuracy noise, "
                   "-0.07 * sqrt(4096 / valid_batch_size) (-0.40 at 128 images; see "
                   "docs/search.md).")
flags.DEFINE_float("target", 1.0, "Latency target T of the normalised metric f (1.0 = as fast "
                   "as MobileNetV1 on average/worst case).")
flags.DEFINE_string("space", "multi_hw", "Search space: a registered name (multi_hw), a "
                    "shipped reduced space (multi_hw@ethos_u55, ...) or a space file (.json) "
                    "of search.reduce_space; a reduced space uses its base space's cost models "
                    "and never samples a masked choice (docs/block_profiles.md).")
flags.DEFINE_string("dataset", "digits", "Dataset for mhmodels.data.make_dataset: digits "
                    "(embedded, default), folder:<path>, or a prepared TFDS name.")
flags.DEFINE_string("data_dir", None, "TFDS data dir / image folder of --dataset.")
flags.DEFINE_integer("image_size", 32, "Search image size (square).")
flags.DEFINE_integer("batch_size", 32, "Per-replica batch size of both the train and the "
                     "held-out validation batch.")
flags.DEFINE_integer("valid_batch_size", None, "Per-replica held-out batch whose accuracy "
                     "enters the reward (default: 4x --batch_size; a larger batch, a less "
                     "noisy reward).")
flags.DEFINE_integer("steps", None, f"Search steps (default {DEFAULT_STEPS} when --epochs is "
                     "not given either).")
flags.DEFINE_float("epochs", None, "Search length in epochs of the search_train split "
                   "(instead of --steps).")
flags.DEFINE_float("warmup_fraction", 0.25, "Fraction of steps with TuNAS's filter and op "
                   "warm-ups (the largest child, and every block's regular + fused ops summed, "
                   "each with a probability decaying 1 -> 0).")
flags.DEFINE_float("rl_delay_fraction", 0.5, "Fraction of steps before the controller learns "
                   "(its learning rate is 0 until then; paper: 0.5, TuNAS: 0.25).")
flags.DEFINE_enum("final", "on_target", ["on_target", "argmax"],
                  "The published architecture: argmax = every decision's most likely choice "
                  "(the paper); on_target = the policy's most likely architecture whose "
                  "predicted f is within --target_tolerance of --target (see docs/search.md).")
flags.DEFINE_float("target_tolerance", 0.02, "With --final=on_target: the allowed relative "
                   "distance |f/T - 1| of the predicted f.")
flags.DEFINE_float("learning_rate", 0.05, "Shared-weights learning rate (cosine decay).")
flags.DEFINE_float("momentum", 0.9, "Shared-weights optimizer momentum.")
flags.DEFINE_enum("optimizer", "momentum", ["momentum", "rmsprop"],
                  "Shared-weights optimizer.")
flags.DEFINE_float("weight_decay", 4e-5, "L2 weight decay on the supernet's kernels.")
flags.DEFINE_float("rl_learning_rate", 0.05, "Controller (Adam, beta1=0) learning rate.")
flags.DEFINE_float("supernet_width", 0.25, "Channel multiplier of the supernet during search "
                   "(a proxy: the emitted architecture is always at width 1.0). Use 1.0 on "
                   "accelerators for the paper's setting.")
flags.DEFINE_string("model_dir", None, "Directory of checkpoints, TensorBoard summaries, "
                    "history and the search config; re-use it to resume.")
flags.DEFINE_enum("strategy", "default", ["default", "mirrored", "multi_worker", "tpu"],
                  "tf.distribute strategy: default, mirrored (local devices or "
                  "--num_cpu_devices logical CPUs), multi_worker ($TF_CONFIG), tpu (--tpu).")
flags.DEFINE_string("tpu", None, "TPU name or grpc:// address for --strategy=tpu.")
flags.DEFINE_integer("num_cpu_devices", 0, "With --strategy=mirrored: split the CPU into this "
                     "many logical devices (one replica each).")
flags.DEFINE_integer("steps_per_loop", 1, "Search steps per host call, run in a tf.function "
                     "loop (TPU jobs: 100 or more hides the host round trip). Checkpoints, "
                     "summaries and log lines happen at loop boundaries; resuming stays exact "
                     "and may use another value.")
flags.DEFINE_bool("jit_compile", False, "Compile the replica step with XLA (a TPU compiles it "
                  "anyway; this checks a step compiles, or speeds up a GPU).")
flags.DEFINE_integer("seed", 0, "Seed of weights, sampling, warm-up and data order.")
flags.DEFINE_string("entry_name", None, "Name of the emitted zoo entry (default "
                    "searched_<metric>_<UTC timestamp>, kept when the search resumes); an "
                    "existing name is an error.")
flags.DEFINE_string("zoo_dir", None, "Directory the entry is written to (default: the user "
                    "zoo $MHMODELS_HOME/zoo/models, i.e. ~/.cache/mhmodels/zoo/models, which "
                    "mhmodels lists). Other directories are found through $MHMODELS_ZOO_PATH.")
flags.DEFINE_string("cost_model_dir", None, "Directory of the <hardware>.json cost models "
                    "(default: your refits in $MHMODELS_HOME/cost_models, then the shipped "
                    "zoo/cost_models/).")
flags.DEFINE_integer("checkpoint_every", 200, "Save a checkpoint every N steps (and at the end).")
flags.DEFINE_integer("keep_checkpoints", 2, "Checkpoints kept in --model_dir/checkpoints, the "
                     "newest (about 100 MB each at the default sizes). 1 is enough to resume: "
                     "a checkpoint is complete before older ones are deleted; 0 keeps one "
                     "while the search runs and deletes it once the entry is written.")
flags.DEFINE_integer("summary_every", 10, "Write TensorBoard summaries every N steps.")
flags.DEFINE_integer("log_every", 100, "Log a progress line every N steps.")
flags.DEFINE_integer("max_steps", None, "Stop at this step without finishing (no entry, no "
                     "extra checkpoint): emulates a pre-emption; rerun without it to resume.")
flags.DEFINE_bool("progress", True, "Show a tqdm progress bar.")
flags.DEFINE_bool("measure", True, "After the search, build the entry at 224x224, export it to "
                  "TFLite and time it on every measurable hardware beside --compare.")
flags.DEFINE_bool("calibrate", True, "Before a new search, calibrate the CPU cost models of "
                  "--hardware to this host if none is yet (--calibration_archs architectures "
                  "and MobileNetV1 timed at 224x224, about a minute; kept in "
                  "$MHMODELS_HOME/cost_models and preferred from then on), so the target means "
                  "this host's latency. Not with --cost_model_dir or another --space.")
flags.DEFINE_integer("calibration_archs", 12, "Architectures --calibrate times (>= 10).",
                     lower_bound=10)
flags.DEFINE_list("compare", ["multi_max", "multi_avg", "mobilenet_v2", "mobilenet_edgetpu"],
                  "Zoo models measured beside the searched one.")
flags.DEFINE_integer("measure_image_size", 224, "Input size of the latency comparison.")
flags.mark_flag_as_required("model_dir")

# `--help` lists the flags under these headings (mhmodels.cli).
FLAG_GROUPS = {
    "data": ("dataset", "data_dir", "image_size", "batch_size", "valid_batch_size"),
    "supernet": ("space", "supernet_width", "steps", "epochs", "warmup_fraction",
                 "learning_rate", "momentum", "optimizer", "weight_decay", "seed"),
    "controller": ("rl_learning_rate", "rl_delay_fraction", "final", "target_tolerance"),
    "reward": ("metric", "beta", "target"),
    "hardware": ("hardware", "cost_model_dir", "calibrate", "calibration_archs", "measure",
                 "compare", "measure_image_size"),
    "distribution": ("strategy", "tpu", "num_cpu_devices", "steps_per_loop", "jit_compile"),
    "output": ("model_dir", "entry_name", "zoo_dir", "checkpoint_every", "keep_checkpoints",
               "summary_every", "log_every", "max_steps", "progress"),
}


def config_from_flags():
    from .config import SearchConfig
    steps = FLAGS.steps
    if steps is None and FLAGS.epochs is None:
        steps = DEFAULT_STEPS
    return SearchConfig(
        model_dir=FLAGS.model_dir, hardware=tuple(FLAGS.hardware), metric=FLAGS.metric,
        beta=FLAGS.beta, target=FLAGS.target, space=FLAGS.space, dataset=FLAGS.dataset,
        data_dir=FLAGS.data_dir, image_size=FLAGS.image_size, batch_size=FLAGS.batch_size,
        valid_batch_size=FLAGS.valid_batch_size, steps=steps, epochs=FLAGS.epochs, warmup_fraction=FLAGS.warmup_fraction,
        rl_delay_fraction=FLAGS.rl_delay_fraction, learning_rate=FLAGS.learning_rate,
        momentum=FLAGS.momentum, optimizer=FLAGS.optimizer, weight_decay=FLAGS.weight_decay,
        rl_learning_rate=FLAGS.rl_learning_rate, supernet_width=FLAGS.supernet_width,
        seed=FLAGS.seed, checkpoint_every=FLAGS.checkpoint_every,
        keep_checkpoints=FLAGS.keep_checkpoints,
        summary_every=FLAGS.summary_every, log_every=FLAGS.log_every,
        entry_name=FLAGS.entry_name, zoo_dir=FLAGS.zoo_dir,
        cost_model_dir=FLAGS.cost_model_dir, max_steps=FLAGS.max_steps,
        steps_per_loop=FLAGS.steps_per_loop, jit_compile=FLAGS.jit_compile,
        final=FLAGS.final, target_tolerance=FLAGS.target_tolerance,
        progress=FLAGS.progress and sys.stderr.isatty())


def check_flags():
    """Every check that needs no TensorFlow, before it loads: a bad flag is one line."""
    from .config import (check_cost_models, check_entry_name, finished_entry_name,
                               validate_config)
    config = config_from_flags()
    validate_config(config)
    check_unlocked(config.model_dir, "search", chief=is_chief_task(FLAGS.strategy),
                   flag="--model_dir")  # a second search on one model_dir: refused now
    check_cost_models(config)
    if config.entry_name and finished_entry_name(config.model_dir) != config.entry_name:
        check_entry_name(config.entry_name, config.zoo_dir)  # a clash: before any work
    if FLAGS.num_cpu_devices < 0:
        raise ValueError(f"--num_cpu_devices={FLAGS.num_cpu_devices}: must be >= 0")
    if FLAGS.measure_image_size < 32:
        raise ValueError(f"--measure_image_size={FLAGS.measure_image_size}: must be >= 32")
    if FLAGS.measure:  # a typo in --compare is an error now, not after the search
        import mhmodels
        for name in FLAGS.compare:
            try:
                mhmodels.get_spec(name)
            except ValueError as err:
                raise ValueError(f"--compare: {err}") from None
    return config


def _exact_note(final: dict, config) -> str:
    """Where the landing was priced exactly (vela), say so: the predicted f printed above is
    the cost models', which may be off on the searched architecture (docs/search_target.md)."""
    pricing = next((p for p in final.get("exact_pricings", []) if p.get("published")), None)
    if pricing is None:
        return ""
    exact = [hw for hw in config.hardware if hw in pricing]
    return (f", by its exact price on {', '.join(exact)}: f {pricing['f']:.3f} (the cost "
            f"models say {final['predicted_f']:.3f})")


def main(argv):
    if len(argv) > 1:
        raise ValueError(f"unexpected arguments: {' '.join(argv[1:])}")
    logging.getLogger("search").setLevel(logging.INFO)
    check_flags()
    start = time.time()
    # The strategy first: splitting the CPU into logical devices must precede any TF op.
    from . import distribute
    strategy = distribute.make_strategy(FLAGS.strategy, tpu=FLAGS.tpu,
                                        num_cpu_devices=FLAGS.num_cpu_devices)
    from .loop import run_search
    config = config_from_flags()
    if FLAGS.calibrate and FLAGS.strategy in ("default", "mirrored"):  # one host's models
        from .config import calibrate_cpu_cost_models
        if calibrate_cpu_cost_models(config, FLAGS.calibration_archs):
            check_flags()  # the calibrated models load and fit the space
    print(f"search: {config.metric} over {', '.join(config.hardware)} on {config.dataset}, "
          f"strategy {FLAGS.strategy} ({strategy.num_replicas_in_sync} replica(s)), "
          f"model_dir {config.model_dir}", flush=True)
    result = run_search(config, strategy=strategy)
    if result.already_finished:
        print(f"\n{config.model_dir} holds a finished search ({result.total_steps} steps): "
              f"nothing to do. Its zoo entry is {result.entry_path}  "
              f"(mhmodels.build({result.spec.name!r})); use a new --model_dir to search again")
        return 0
    if not result.finished:
        print(f"stopped at step {result.steps_done}/{result.total_steps} (--max_steps); rerun "
              "with the same --model_dir to resume")
        return 0
    print(f"\nsearch finished: {result.total_steps} steps in {result.wall_s:.0f} s")
    print(f"architecture: {'-'.join(str(int(c)) for c in result.choices)}")
    print("predicted latency (ms): " + ", ".join(
        f"{k} {v:.2f} (f {result.predicted_f[k]:.3f})"
        for k, v in result.predicted_latency_ms.items())
        + f"; f_avg {result.f_avg:.3f}, f_max {result.f_max:.3f} (target {config.target:g})")
    final = result.final
    if final.get("rule") == "on_target" and final.get("decisions_moved"):
        print(f"final architecture: the policy's argmax predicted f {final['argmax_predicted_f']:.3f}; "
              f"{final['decisions_moved']} decision(s) moved to its most likely architecture "
              f"within {final['tolerance']:.0%} of the target" + _exact_note(final, config))
    print(f"zoo entry: {result.entry_path}  (mhmodels.build({config.entry_name!r}))")
    if FLAGS.measure:
        from .config import make_zoo_visible
        make_zoo_visible(config.zoo_dir)
        from .compare import compare_latency
        compare_latency(config, FLAGS.compare, FLAGS.measure_image_size)
    print(f"\ntotal wall time {time.time() - start:.0f} s")
    return 0


def run():
    cli.run(main, groups=FLAG_GROUPS)


if __name__ == "__main__":
    run()
