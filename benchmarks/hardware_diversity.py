"""Do the hardware disagree? Pairwise agreement of latency over random architectures, and the
zoo on every hardware (CPU through LiteRT, Ethos-U NPUs through vela) in Table 1's shape.

    python benchmarks/hardware_diversity.py                       # data + cost models + zoo
    python benchmarks/hardware_diversity.py --measure=30          # also 30 fresh architectures
    python benchmarks/hardware_diversity.py --nozoo --json=d.json

For every pair of hardware it prints
  * rank correlation (Spearman) of latency over the same architectures, and
  * the correlation at matched MAdds: of the residuals of log latency after a line in log
    MAdds, i.e. whether two hardware agree on which networks are slower *than their MAdds
    say*. A multi-hardware search only has something to balance where this is low,
from three sources: the measured rows shared by the shipped datasets (zoo/cost_models/data:
CPU timings and vela estimates of the same architectures), `--measure` fresh architectures
measured on every hardware in this run, and the cost models' predictions for
`--num_predicted` uniform samples. Then the zoo models at their Table 1 widths measured on
cpu_float, cpu_int8 and the NPUs (`python -m mhmodels benchmark`'s path), with MN-Norm avg / max
over all of them, and which model each hardware ranks fastest and slowest.
"""
from __future__ import annotations

import csv
import itertools
import os
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags  # noqa: E402

import _report  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_list("hardware", ["cpu_float", "cpu_int8", "cpu_ref_float", "ethos_u55",
                               "ethos_u65", "ethos_u85"], "Hardware compared.")
flags.DEFINE_integer("num_predicted", 5000, "Uniform architectures priced by the cost models.")
flags.DEFINE_integer("measure", 0, "Fresh uniform architectures measured on every hardware.")
flags.DEFINE_integer("image_size", 224, "Input size of the measured networks.")
flags.DEFINE_bool("zoo", True, "Also measure every zoo model on every hardware.")
flags.DEFINE_string("output_dir", "hardware_diversity", "Where the zoo benchmark files go.")

DATA = Path(__file__).resolve().parent.parent / "zoo" / "cost_models" / "data"


def agreement(lat: dict, madds):
    """{(a, b): (spearman, residual correlation, n)} over the archs both have."""
    import numpy as np
    from search.cost_model import spearman
    out = {}
    log_madds = np.log(np.asarray(madds, float))
    resid = {}
    for h, v in lat.items():
        y = np.log(np.asarray(v, float))
        slope, icept = np.polyfit(log_madds, y, 1)
        resid[h] = y - (slope * log_madds + icept)
    for a, b in itertools.combinations(lat, 2):
        out[(a, b)] = (spearman(lat[a], lat[b]), float(np.corrcoef(resid[a], resid[b])[0, 1]),
                       len(madds))
    spread = {h: float(np.std(r)) for h, r in resid.items()}
    return out, spread


def shipped_rows(hardware):
    """{arch: {hw: ms, 'madds': M}} joined over the shipped datasets (architectures only)."""
    rows: dict = {}
    for path in sorted(DATA.glob("*.csv")):
        with path.open(newline="") as f:
            for r in csv.DictReader(f):
                if r["arch"] == "mobilenet_v1":
                    continue
                row = rows.setdefault(r["arch"], {"madds": float(r["madds_m"])})
                for h in hardware:
                    if r.get(f"{h}_ms"):
                        row[h] = float(r[f"{h}_ms"])
    return {k: v for k, v in rows.items() if all(h in v for h in hardware)}


def space_madds(space, choices):
    """MAdds (M, 224x224) of many architectures without building them: the cost-model
    layout's per-entry MAdds plus the fixed stem / head / classifier, taken from one build."""
    import numpy as np

    import mhmodels
    from mhmodels.profile import count_layers
    from search.cost_model import PHYSICAL, build_layout
    layout = build_layout(space, 224)
    cols = [i for i, n in enumerate(PHYSICAL) if n.endswith("_madds")]
    per_arch = layout.design(choices) @ layout.descriptors[:, cols].sum(1)
    model = mhmodels.build(space.decode(choices[0]), input_shape=(224, 224, 3))
    fixed = count_layers(model).madds / 1e6 - per_arch[0]
    return per_arch + fixed


def print_agreement(title, pairs, spread):
    print(f"\n{title}")
    print(f"{'hardware pair':<28}{'Spearman':>10}{'r @ MAdds':>11}{'archs':>7}")
    for (a, b), (rho, r, n) in pairs.items():
        print(f"{a + ' / ' + b:<28}{rho:>10.3f}{r:>11.3f}{n:>7}")
    print("log-latency spread around the MAdds line (std): " +
          ", ".join(f"{h} {s:.3f}" for h, s in spread.items()))


def main(argv):
    del argv
    _report.quiet_logs()
    import numpy as np

    from search.cost_model import load_cost_model
    from search.hardware import get_hardware, measure_all
    from search.space import get_space

    space = get_space("multi_hw")
    hardware = [get_hardware(h) for h in FLAGS.hardware]
    names = [h.name for h in hardware]
    results: dict = {"hardware": names}

    rows = shipped_rows(names)
    if len(rows) >= 5:
        lat = {h: [r[h] for r in rows.values()] for h in names}
        pairs, spread = agreement(lat, [r["madds"] for r in rows.values()])
        print_agreement(f"Measured: {len(rows)} architectures in the shipped datasets "
                        "(224x224)", pairs, spread)
        results["shipped"] = {f"{a}/{b}": v for (a, b), v in pairs.items()}
    else:
        print(f"\n(the shipped datasets share {len(rows)} architectures across {names})")

    if FLAGS.measure:
        from mhmodels.profile import count_layers
        import mhmodels
        rng = np.random.default_rng(2024)
        lat = {h: [] for h in names}
        madds = []
        size = FLAGS.image_size
        for i in range(FLAGS.measure):
            choices = space.sample(rng)
            model = mhmodels.build(space.decode(choices), input_shape=(size, size, 3))
            madds.append(count_layers(model).madds / 1e6)
            res = measure_all(model, hardware, size)
            for hw in hardware:
                lat[hw.name].append(hw.latency_ms(res[hw.name]))
            print(f"  measured {i + 1}/{FLAGS.measure}", flush=True)
        pairs, spread = agreement(lat, madds)
        print_agreement(f"Measured now: {FLAGS.measure} uniform architectures ({size}x{size})",
                        pairs, spread)
        results["measured"] = {f"{a}/{b}": v for (a, b), v in pairs.items()}

    rng = np.random.default_rng(0)
    choices = np.stack([space.sample(rng) for _ in range(FLAGS.num_predicted)])
    lat = {h: np.asarray(load_cost_model(h).predict(choices)) for h in names}
    pairs, spread = agreement(lat, space_madds(space, choices))
    print_agreement(f"Predicted: {FLAGS.num_predicted} uniform architectures (cost models)",
                    pairs, spread)
    results["predicted"] = {f"{a}/{b}": v for (a, b), v in pairs.items()}

    if FLAGS.zoo:
        import mhmodels
        from mhmodels.benchmark import format_table, run_benchmark
        from search.hardware import VelaHardware
        npus = [h.name for h in hardware if isinstance(h, VelaHardware)]
        entries = []
        for name in mhmodels.list_models():
            entries.append((name, float(mhmodels.get_spec(name).reference.get("width", 1.0))))
        by_width: dict = {}
        for name, width in entries:
            by_width.setdefault(width, []).append(name)
        table = []
        for width, models in sorted(by_width.items()):
            # cpu_float, cpu_int8 (XNNPACK) and the NPUs: the deployment targets.
            res = run_benchmark(models, [width], ["float", "int8"], xnnpack="on",
                                image_size=FLAGS.image_size, runs=10, warmup=2, rounds=1,
                                output_dir=Path(
                                    FLAGS.output_dir) / f"w{width:g}", npu=npus, progress=False)
            table.append(res)
            print("\n" + format_table(res))
        rows = [r for res in table for r in res["rows"] if not r.get("normalizer")]
        print("\nfastest / slowest zoo model per hardware (at its Table 1 width):")
        cols = table[0]["hardware"]
        for h in cols:
            ranked = sorted(rows, key=lambda r: r["latency"][h]["median_ms"])
            print(f"  {h:<16} first {ranked[0]['model']}@{ranked[0]['width']:g} "
                  f"({ranked[0]['latency'][h]['median_ms']:.2f} ms), last "
                  f"{ranked[-1]['model']}@{ranked[-1]['width']:g} "
                  f"({ranked[-1]['latency'][h]['median_ms']:.2f} ms)")
        results["zoo"] = [{k: r[k] for k in ("model", "width", "madds_m", "mn_norm_avg",
                                             "mn_norm_max")} |
                          {h: r["latency"][h]["median_ms"] for h in cols} for r in rows]
    _report.write_json(results)


if __name__ == "__main__":
    app.run(main)
