"""`python -m mhmodels summary [names...]`: our params / MAdds beside the paper's Table 1."""
from __future__ import annotations

from absl import app, flags

from mhmodels.profile import profile
from mhmodels.registry import get_spec, list_models

FLAGS = flags.FLAGS
flags.DEFINE_float("width", None, "Width multiplier; default: the width the paper reports "
                   "(Table 1), else 1.0.")
flags.DEFINE_integer("image_size", 224, "Square input size.")
flags.DEFINE_integer("num_classes", 1001, "Classifier size (1001 = ImageNet + background, as in "
                     "the paper).")
flags.DEFINE_bool("layers", False, "Also print the per-layer rows.")


def summary_rows(names: list[str], width: float | None, image_size: int, num_classes: int):
    """(name, width, profile, reference) for each model; reference = paper numbers or {}."""
    rows = []
    for name in names:
        reference = dict(get_spec(name).reference)
        w = width if width is not None else float(reference.get("width", 1.0))
        if reference.get("width") is not None and w != reference["width"]:
            reference = {}
        result = profile(name, w, input_shape=(image_size, image_size, 3),
                         num_classes=num_classes)
        rows.append((name, w, result, reference if image_size == 224 else {}))
    return rows


def format_table(rows) -> str:
    def pct(ours: float, paper: float | None) -> str:
        return f"{100 * (ours - paper) / paper:+6.2f}%" if paper else "      "

    def num(v, fmt):
        return format(v, fmt) if v is not None else "-"

    head = (f"{'model':24s} {'width':>5s} {'params M':>9s} {'paper':>6s} {'diff':>7s} "
            f"{'MAdds M':>9s} {'paper':>6s} {'diff':>7s}")
    lines = [head, "-" * len(head)]
    for name, w, result, ref in rows:
        p_ref, m_ref = ref.get("params_m"), ref.get("madds_m")
        lines.append(f"{name:24s} {w:5.2f} {result.params_m:9.3f} {num(p_ref, '6.2f'):>6s} "
                     f"{pct(result.params_m, p_ref)} {result.madds_m:9.1f} "
                     f"{num(m_ref, '6.0f'):>6s} {pct(result.madds_m, m_ref)}")
    return "\n".join(lines)


def main(argv: list[str]) -> None:
    names = argv[1:] or list_models()
    try:
        for name in names:
            get_spec(name)  # unknown names fail before any model is built
    except ValueError as err:
        raise app.UsageError(str(err)) from None
    rows = summary_rows(names, FLAGS.width, FLAGS.image_size, FLAGS.num_classes)
    print(format_table(rows))
    if FLAGS.layers:
        for name, w, result, _ in rows:
            print(f"\n{name} @ width {w}\n{result.table()}")
