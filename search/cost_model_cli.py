"""Fit latency cost models from collected latencies, or calibrate the CPU ones to this host.

    python -m search.cost_model --fit [--data=...] [--hardware=cpu_float,...]
    python -m search.cost_model --calibrate [--hardware=cpu_float,cpu_int8]

--fit writes <hardware>.json (<hardware>.<space>.json for a --space other than multi_hw; +
a held-out scatter PNG) per hardware column of --data;
--calibrate times a calibration set here and writes <hardware>@<host id>.json. Both go to
--output_dir (default $MHMODELS_HOME/cost_models), which the search reads before the shipped
models. (`python -m search.cost_model` runs this module: the computation is
search.cost_model, the plots and summaries search.cost_model_report.)
"""
from __future__ import annotations

from pathlib import Path

from absl import flags

from mhmodels import cli
from mhmodels.cli import command

from .cost_model import DEFAULT_DIR, calibrate_cost_models, model_file_name, space_label
from .cost_model_report import calibration_summary, fit_and_save, fit_summary


def define_flags() -> None:
    flags.DEFINE_bool("fit", False, "Fit cost models from --data and write them.")
    flags.DEFINE_list("data", [str(DEFAULT_DIR / "data" / "cpu_latency.csv")],
                      "CSV(s) written by search.collect_latency (or arch,latency_ms); several "
                      "collections of one hardware configuration are pooled, one row per "
                      "architecture.")
    flags.DEFINE_list("hardware", ["cpu_float", "cpu_int8", "cpu_ref_float"],
                      "Hardware columns of --data to fit (csv:<path> fits that file).")
    flags.DEFINE_string("space", "multi_hw", "Search space name or space file "
                        "(search.space.get_space); a reduced space's model is its base "
                        "space's (same decisions), fitted on all rows of --data.")
    flags.DEFINE_string("output_dir", None, "Where <hardware>.json (+ PNG) go; default "
                        "$MHMODELS_HOME/cost_models (~/.cache/mhmodels/cost_models), which "
                        "the search reads before the shipped models. Shipped files are never "
                        "overwritten.")
    flags.DEFINE_bool("plot", True, "Write a held-out predicted-vs-measured scatter PNG.")
    flags.DEFINE_bool("calibrate", False, "Calibrate the CPU --hardware (default cpu_float, "
                      "cpu_int8) to this host: time --calibration_archs architectures + "
                      "MobileNetV1 in --rounds interleaved rounds and write <hw>@<host id>.json "
                      "to --output_dir, which load_cost_model prefers on this host.")
    flags.DEFINE_integer("calibration_archs", 48, "Architectures --calibrate measures.",
                         lower_bound=10)
    flags.DEFINE_integer("rounds", 3, "Interleaved timing rounds of --calibrate (minimum "
                         "kept).", lower_bound=1)
    flags.DEFINE_integer("image_size", 224, "Input resolution --calibrate measures at.")
    flags.DEFINE_integer("seed", 0, "Sampling seed of --calibrate's architectures.")


def _calibrate(FLAGS) -> int:
    hardware = FLAGS.hardware
    if FLAGS["hardware"].using_default_value:  # the reference kernels: not by default
        hardware = [h for h in hardware if h != "cpu_ref_float"]
    paths = calibrate_cost_models(hardware, num_archs=FLAGS.calibration_archs,
                                  image_size=FLAGS.image_size, rounds=FLAGS.rounds,
                                  seed=FLAGS.seed, output_dir=FLAGS.output_dir)
    for hw, path in paths.items():
        print(calibration_summary(hw, path))
    return 0


def _fit(FLAGS) -> int:
    from mhmodels.files import user_cost_model_dir
    from .hardware import hardware_id
    output_dir = Path(FLAGS.output_dir or user_cost_model_dir())
    for hw in FLAGS.hardware:
        model = fit_and_save(FLAGS.data, hw, output_dir, FLAGS.space, FLAGS.plot)
        print(fit_summary(hw, model, output_dir / model_file_name(hardware_id(model.hardware),
                                                                  space_label(FLAGS.space))))
    if not FLAGS.output_dir:
        print(f"{command('search')} reads these before the shipped models ({DEFAULT_DIR})")
    else:
        print(f"use them with {command('search')} --cost_model_dir={output_dir}")
    return 0


def main(argv) -> int:
    FLAGS = flags.FLAGS
    if len(argv) > 1:
        raise ValueError(f"unexpected arguments: {' '.join(argv[1:])}")
    if FLAGS.calibrate:
        return _calibrate(FLAGS)
    if not FLAGS.fit:
        raise ValueError("nothing to do: pass --fit or --calibrate (see --help)")
    return _fit(FLAGS)


def run() -> None:
    """`python -m search.cost_model` (and `python -m search.cost_model_cli`)."""
    define_flags()
    cli.run(main)


if __name__ == "__main__":
    run()
