"""Where do grouped blocks sit between depthwise and full convolution? Latency per MAdd by
stage on this CPU and on each Ethos-U (issue #20 item 4).

    python benchmarks/grouped_blocks.py --output_dir=runs/grouped_blocks     # 224, every stage
    python benchmarks/grouped_blocks.py --output_dir=/tmp/gb --small         # seconds (tests)
    python benchmarks/grouped_blocks.py --output_dir=/tmp/gb --expansion=6 --kernel=5

For every stage of the `multi_hw_grouped` space (its resolution and its width at filter ratio
1.0, read from the space) it writes probe networks from specs (`search.hardware.
write_formats`, the direct writer: random weights, each hardware's export format): the
space's stem, one depthwise-separable block per stage up to this one (to reach its resolution
and width), `--blocks` identical stride-1 blocks of one variant, the space's head and top.
The baseline is the same network without the probed blocks, so probe - baseline is the
marginal latency (and MAdds) of the probed blocks. Variants: the space's block types (regular
depthwise `ibn`, `ibn_g32`, `ibn_g64`, `fused_ibn_g32`, `fused_ibn_g64`, `fused_ibn` = full KxK
conv), their group sizes from the space's own rule (`GroupedSearchSpace.block_kind`), plus
`ibn_full`: the regular block with a full KxK conv (group size = expanded channels, 1 group).

Every probe is priced on every hardware in its own format (vela: deterministic, once; the CPU:
`Hardware.measure_tflite`, `--rounds` passes over all probes of all stages, baseline and
depthwise peer next to each variant, minimum kept). MAdds are the writer's count, which is
`mhmodels.profile`'s (tested equal). Reported per stage x variant x hardware: marginal ms,
ms per GMAdd, and the marginal ms relative to the depthwise block (`ibn`) at the same stage,
the peer measured in the same run. Writes grouped_blocks.csv, grouped_blocks.md and
grouped_blocks.png (ms/GMAdd by stage, one panel per hardware) into --output_dir.
"""
from __future__ import annotations

import csv
import dataclasses
import io
import math
import os
import time
from pathlib import Path
from typing import Any, Sequence

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags  # noqa: E402

import _report  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("output_dir", None, "Where grouped_blocks.csv / .md / .png go.")
flags.DEFINE_list("hardware", ["cpu_float", "cpu_int8", "ethos_u55", "ethos_u65", "ethos_u85"],
                  "Hardware priced (each in its own export format).")
flags.DEFINE_integer("image_size", 224, "Input resolution of the probe networks.")
flags.DEFINE_list("stages", [], "Stage indices probed (default: every stage of the space).")
flags.DEFINE_integer("blocks", 3, "Identical probed blocks per probe network.")
flags.DEFINE_integer("expansion", 4, "Expansion of the probed blocks.")
flags.DEFINE_integer("kernel", 3, "Kernel of the probed blocks' KxK conv.")
flags.DEFINE_integer("rounds", 3, "CPU hardware: passes over all probes, minimum kept.")
flags.DEFINE_float("min_time_s", None, "CPU hardware: timing seconds per measurement "
                   "(default: the hardware's own).")
flags.DEFINE_bool("small", False, "64x64, stages 0-1, ethos_u55 only: seconds (the test).")
flags.mark_flag_as_required("output_dir")

SPACE = "multi_hw_grouped"
PEER = "ibn"  # the depthwise block: every ratio is against it
FULL = "ibn_full"  # the regular block with a full KxK conv (not a choice of the space)
SMALL = dict(image_size=64, stages=["0", "1"], hardware=["ethos_u55"])


@dataclasses.dataclass(frozen=True)
class StageShape:
    """Where a stage's blocks run: resolution (square) and channels at filter ratio 1.0."""

    index: int
    resolution: int
    filters: int

    @property
    def label(self) -> str:
        return f"s{self.index} {self.resolution}x{self.resolution}x{self.filters}"


def stage_shapes(space, image_size: int) -> list[StageShape]:
    """Every stage's resolution and width, from the space (stem stride, stage strides, base
    widths): nothing here is a copied number."""
    from search.space import FILTER_RATIOS
    template = template_spec(space)
    size = -(-image_size // template.stem.stride)
    out = []
    for s, stage in enumerate(space.stages):
        size = -(-size // stage.stride)  # SAME padding
        out.append(StageShape(s, size, space.stage_filters(s, FILTER_RATIOS.index(1.0))))
    return out


def template_spec(space):
    """A decoded point of the space: its stem, head and top are the probes'."""
    import numpy as np
    return space.decode(np.zeros(len(space.decisions), dtype=np.int64), name="probe")


def variant_names(space) -> list[str]:
    """Depthwise to full: the regular block types by group size, `ibn_full`, then the fused
    types by group size and the (full) fused block last."""
    from search.space import grouped_type
    types = list(space.block_types)
    regular = sorted((t for t in types if grouped_type(t)[0] == "ibn"),
                     key=lambda t: grouped_type(t)[1] or 0)
    fused = sorted((t for t in types if grouped_type(t)[0] == "fused_ibn"),
                   key=lambda t: grouped_type(t)[1] or math.inf)
    return regular + [FULL] + fused


def probe_block(space, variant: str, filters: int, expansion: int, kernel: int):
    """The probed block (stride 1, `filters` in and out) of a variant: the space's kind and
    group size for its types, a 1-group ibn for `ibn_full`."""
    from mhmodels.spec import LayerSpec, round8
    if variant == FULL:
        kind, group = "ibn", round8(expansion * filters)
    else:
        kind, group = space.block_kind(variant, filters, expansion, 1)
    return LayerSpec(kind=kind, filters=filters, kernel=kernel, stride=1, expansion=expansion,
                     activation="relu", group_size=group)


def group_size_of(block) -> int:
    """Output channels per group of the block's KxK conv: 1 depthwise, hidden when full."""
    from mhmodels.spec import round8
    hidden = round8(block.expansion * block.filters)
    if block.group_size is not None:
        return block.group_size
    return 1 if block.kind == "ibn" else hidden


def probe_spec(space, stage: StageShape, block, count: int):
    """Stem, one depthwise-separable block per stage up to `stage`, `count` x `block`, head,
    top. count 0 is the baseline."""
    from mhmodels.spec import LayerSpec
    from search.space import FILTER_RATIOS
    prefix = tuple(
        LayerSpec(kind="ibn", filters=space.stage_filters(s, FILTER_RATIOS.index(1.0)),
                  kernel=3, stride=space.stages[s].stride, expansion=1, activation="relu")
        for s in range(stage.index + 1))
    name = f"probe_s{stage.index}_{'baseline' if block is None else count}"
    spec = dataclasses.replace(template_spec(space), name=name,
                               blocks=prefix + ((block,) * count if block else ()))
    spec.validate()
    return spec


def write_probes(space, stages: Sequence[StageShape], hardware, settings: dict) -> dict:
    """{(stage, variant): {'files': {format: bytes}, 'madds': int, 'block': LayerSpec}};
    variant 'baseline' is the network without probed blocks."""
    from search.hardware import write_formats
    formats = [hw.export_format for hw in hardware]
    out = {}
    for stage in stages:
        blocks = {"baseline": None}
        blocks.update({v: probe_block(space, v, stage.filters, settings["expansion"],
                                      settings["kernel"]) for v in variant_names(space)})
        for variant, block in blocks.items():
            spec = probe_spec(space, stage, block, settings["blocks"] if block else 0)
            files, profile = write_formats(spec, formats, settings["image_size"])
            out[(stage.index, variant)] = {"files": files, "madds": profile.madds,
                                           "block": block}
    return out


def measure(probes: dict, hardware, settings: dict) -> dict:
    """{(stage, variant): {hardware: ms}}: deterministic hardware once; timed hardware in
    `rounds` passes over every probe (a variant next to its stage's baseline and depthwise
    peer), the minimum of `latency_ms` kept. Ops an NPU leaves on the host are counted in
    `cpu_ops` ({hardware: max over probes})."""
    ms: dict = {key: {} for key in probes}
    cpu_ops: dict = {}
    for hw in (h for h in hardware if h.deterministic):
        t0 = time.time()
        for key, probe in probes.items():
            result = hw.measure_tflite(probe["files"][hw.export_format])
            ms[key][hw.name] = hw.latency_ms(result)
            cpu_ops[hw.name] = max(cpu_ops.get(hw.name, 0), getattr(result, "cpu_ops", 0))
        print(f"  {hw.name}: {len(probes)} probes in {time.time() - t0:.0f} s", flush=True)
    timed = [h for h in hardware if not h.deterministic]
    overrides = {"min_time_s": settings["min_time_s"]}
    for r in range(settings["rounds"] if timed else 0):
        t0 = time.time()
        for key, probe in probes.items():
            for hw in timed:
                value = hw.latency_ms(hw.measure_tflite(probe["files"][hw.export_format],
                                                        **overrides))
                ms[key][hw.name] = min(value, ms[key].get(hw.name, value))
        print(f"  CPU round {r + 1}/{settings['rounds']}: {time.time() - t0:.0f} s", flush=True)
    return {"ms": ms, "cpu_ops": cpu_ops}


def _ratio(a: float, b: float) -> float | None:
    """a / b, None where the peer's marginal time is not positive (CPU noise)."""
    return round(a / b, 4) if b > 0 else None


def rows_of(stages: Sequence[StageShape], probes: dict, ms: dict, names: Sequence[str],
            settings: dict) -> list[dict]:
    """One row per stage x variant: marginal MAdds, and per hardware marginal ms, ms per
    GMAdd and the ratio to the depthwise peer at the same stage."""
    rows = []
    for stage in stages:
        base = probes[(stage.index, "baseline")]
        peer = probes[(stage.index, PEER)]
        peer_madds = peer["madds"] - base["madds"]
        for variant in variant_names_in(probes, stage.index):
            probe = probes[(stage.index, variant)]
            madds = probe["madds"] - base["madds"]
            row: dict[str, Any] = {
                "stage": stage.index, "resolution": stage.resolution, "filters": stage.filters,
                "blocks": settings["blocks"], "expansion": settings["expansion"],
                "kernel": settings["kernel"], "variant": variant, "kind": probe["block"].kind,
                "group_size": group_size_of(probe["block"]),
                "madds_m": round(madds / 1e6, 4),
                "madds_ratio_to_dw": round(madds / peer_madds, 4)}
            for name in names:
                marginal = ms[(stage.index, variant)][name] - ms[(stage.index, "baseline")][name]
                peer_ms = ms[(stage.index, PEER)][name] - ms[(stage.index, "baseline")][name]
                row[f"{name}_probe_ms"] = round(ms[(stage.index, variant)][name], 5)
                row[f"{name}_ms"] = round(marginal, 5)
                row[f"{name}_ms_per_gmadd"] = round(marginal / (madds / 1e9), 4)
                row[f"{name}_ratio_to_dw"] = _ratio(marginal, peer_ms)
            rows.append(row)
    return rows


def variant_names_in(probes: dict, stage: int) -> list[str]:
    """The probed variants of a stage, in probe order (the baseline left out)."""
    return [v for (s, v) in probes if s == stage and v != "baseline"]


def markdown(rows: list[dict], names: Sequence[str]) -> str:
    """stage x variant rows; per hardware: marginal ms, ms/GMAdd, x depthwise."""
    head = ["stage", "variant", "group", "MAdds M"]
    for name in names:
        head += [f"{name} ms", f"{name} ms/GMAdd", f"{name} x dw"]
    lines = ["| " + " | ".join(head) + " |",
             "|" + "|".join(["---", "---"] + ["---:"] * (len(head) - 2)) + "|"]
    for r in rows:
        cells = [f"{r['stage']} ({r['resolution']}²x{r['filters']})", r["variant"],
                 str(r["group_size"]), f"{r['madds_m']:.1f}"]
        for name in names:
            ratio = r[f"{name}_ratio_to_dw"]
            cells += [f"{r[f'{name}_ms']:.3f}", f"{r[f'{name}_ms_per_gmadd']:.2f}",
                      "—" if ratio is None else f"{ratio:.2f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], names: Sequence[str], path: Path) -> None:
    """ms per GMAdd by stage, one panel per hardware (three to a row), one line per variant
    (log scale; a non-positive marginal time, CPU noise, is left out)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter
    stages = sorted({r["stage"] for r in rows})
    labels = [next(f"s{r['stage']}\n{r['resolution']}²x{r['filters']}" for r in rows
                   if r["stage"] == s) for s in stages]
    variants = list(dict.fromkeys(r["variant"] for r in rows))
    cols = min(3, len(names))
    nrows = -(-len(names) // cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(4.0 * cols + 1.4, 3.3 * nrows),
                             squeeze=False)
    for ax, name in zip(axes.flat, names):
        for variant in variants:
            ys = [next(r[f"{name}_ms_per_gmadd"] for r in rows
                       if r["stage"] == s and r["variant"] == variant) for s in stages]
            ax.plot(range(len(stages)), [y if y > 0 else math.nan for y in ys], marker="o",
                    ms=3, lw=1.2, ls="--" if variant.startswith("fused") else "-",
                    label=variant)
        ax.set_yscale("log")
        plain = FuncFormatter(lambda y, _: f"{y:g}")
        ax.yaxis.set_major_formatter(plain)
        ax.yaxis.set_minor_formatter(plain)
        ax.tick_params(axis="y", which="both", labelsize=7)
        ax.set_xticks(range(len(stages)), labels, fontsize=7)
        ax.set_title(name, fontsize=10)
        ax.set_ylabel("marginal ms per GMAdd", fontsize=8)
        ax.grid(True, which="both", lw=0.3)
    for ax in axes.flat[len(names):]:
        ax.axis("off")
    handles, legend_labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, legend_labels, fontsize=8, loc="center right")
    fig.tight_layout(rect=(0, 0, 1 - 1.4 / (4.0 * cols + 1.4), 1))
    fig.savefig(path, dpi=100)
    plt.close(fig)


def settings_of_flags() -> dict:
    settings = {k: FLAGS[k].value for k in ("hardware", "image_size", "stages", "blocks",
                                            "expansion", "kernel", "rounds", "min_time_s")}
    if FLAGS.small:
        settings.update({k: v for k, v in SMALL.items() if not FLAGS[k].present})
    return settings


def write_outputs(rows: list[dict], names: Sequence[str], header: str, output_dir: Path
                  ) -> str:
    """grouped_blocks.csv / .md / .png, each written atomically; returns the table."""
    from mhmodels.files import atomic_write
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    atomic_write(output_dir / "grouped_blocks.csv", buf.getvalue())
    table = markdown(rows, names)
    atomic_write(output_dir / "grouped_blocks.md", header + "\n" + table)
    tmp = output_dir / f".grouped_blocks.tmp{os.getpid()}.png"
    plot(rows, names, tmp)
    os.replace(tmp, output_dir / "grouped_blocks.png")
    return table


def describe(settings: dict, hardware, cpu_ops: dict, seconds: float) -> str:
    """The settings line of the report: what the numbers depend on."""
    from search.host import current_host
    parts = [f"{settings['image_size']}x{settings['image_size']} input, {settings['blocks']} "
             f"probed blocks of expansion {settings['expansion']}, kernel {settings['kernel']}; "
             "ms = probe - baseline (marginal), x dw = ratio to the depthwise block's marginal "
             "ms at the same stage"]
    for hw in hardware:
        form = hw.export_format
        if hw.deterministic:
            parts.append(f"{hw.name}: {hw.config().get('accelerator', '')} ({form}), vela "
                         f"estimate, ops left on the host: {cpu_ops.get(hw.name, 0)}")
        else:
            parts.append(f"{hw.name}: {form}, LiteRT, {hw.threads} thread, min of "
                         f"{settings['rounds']} rounds of {hw.statistic}, "
                         f"{current_host()['cpu_model']}")
    parts.append(f"{seconds:.0f} s")
    return "\n".join(f"- {p}" for p in parts) + "\n"


def main(argv):
    del argv
    _report.quiet_logs()
    from search.hardware import parse_hardware_list
    from search.space import get_space
    t0 = time.time()
    settings = settings_of_flags()
    space = get_space(SPACE)
    hardware = parse_hardware_list(settings["hardware"])
    stages = stage_shapes(space, settings["image_size"])
    if settings["stages"]:
        stages = [stages[int(s)] for s in settings["stages"]]
    probes = write_probes(space, stages, hardware, settings)
    print(f"{len(probes)} probe networks written in {time.time() - t0:.1f} s", flush=True)
    measured = measure(probes, hardware, settings)
    names = [hw.name for hw in hardware]
    rows = rows_of(stages, probes, measured["ms"], names, settings)
    output_dir = Path(FLAGS.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    header = describe(settings, hardware, measured["cpu_ops"], time.time() - t0)
    table = write_outputs(rows, names, header, output_dir)
    print(header + "\n" + table)
    _report.write_json({"settings": settings, "rows": rows,
                        "cpu_ops": measured["cpu_ops"]})


if __name__ == "__main__":
    app.run(main)
