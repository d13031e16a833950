"""Loading a `.weights.h5` checkpoint into a built model, with a message a user can act on.

Keras reports a checkpoint that does not fit as thousands of characters of tensor values.
`load_weights` says instead which checkpoint does not fit which model and why: another number
of classes (a fine-tuned checkpoint), another width, or another architecture.
"""
from __future__ import annotations

import os
import re
import warnings


class WeightsMismatchError(ValueError):
    """A checkpoint whose variables do not fit the model's.

    `head_only` is True when the classifier's class count is the only difference (the body
    loads: fine-tuning on new classes), False for anything else or when it is unknown.
    """

    def __init__(self, message: str, head_only: bool = False):
        super().__init__(message)
        self.head_only = head_only


def _snake(name: str) -> str:
    name = re.sub(r"(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub(r"([a-z])([A-Z])", r"\1_\2", name).lower()


def _split(key: str) -> tuple[str, int]:
    base, _, tail = key.rpartition("_")
    return (base, int(tail)) if tail.isdigit() and base else (key, 0)


def checkpoint_layers(path: str | os.PathLike) -> dict[str, list[list[tuple[int, ...]]]]:
    """Layer kind -> the variable shapes of each layer of that kind, in model order, from a
    Keras 3 `.weights.h5` file (which names layers `conv2d`, `conv2d_1`, ... by kind)."""
    import h5py
    found: dict[str, dict[int, list[tuple[int, ...]]]] = {}
    with h5py.File(os.fspath(path), "r") as f:
        layers = f.get("layers")
        if layers is None:
            raise ValueError("no 'layers' group: not a Keras 3 model checkpoint")
        for key, group in layers.items():
            kind, index = _split(key)
            variables = group.get("vars")
            shapes = [] if variables is None else [
                tuple(variables[k].shape) for k in sorted(variables.keys(), key=int)]
            found.setdefault(kind, {})[index] = shapes
    return {kind: [v for _, v in sorted(d.items())] for kind, d in found.items()}


def model_layers(model) -> dict[str, list[tuple[str, list[tuple[int, ...]]]]]:
    """Layer kind -> (layer name, variable shapes) of each layer, in the order Keras saves."""
    out: dict[str, list] = {}
    for layer in model.layers:
        if layer.__class__.__name__ == "InputLayer":
            continue
        out.setdefault(_snake(layer.__class__.__name__), []).append(
            (layer.name, [tuple(int(d) for d in w.shape) for w in layer.weights]))
    return out


def explain_mismatch(model, path: str | os.PathLike) -> str:
    """Why the checkpoint at `path` does not fit `model` (one paragraph, no tensor values)."""
    return _mismatch(model, path)[0]


def _mismatch(model, path: str | os.PathLike) -> tuple[str, bool]:
    """(why the checkpoint does not fit, whether only the classifier's class count differs)."""
    head = f"checkpoint {path} does not fit model {model.name!r}"
    try:
        stored = checkpoint_layers(path)
    except (OSError, ValueError) as err:
        return f"{head}: it is not a readable Keras .weights.h5 file ({err})", False
    mine = model_layers(model)
    weighted = lambda d: sum(1 for v in d.values() for x in v if (x[1] if isinstance(x, tuple)
                                                                  else x))
    counts_s = {k: len(v) for k, v in stored.items() if any(v)}
    counts_m = {k: len(v) for k, v in mine.items() if any(x[1] for x in v)}
    if counts_s != counts_m:
        kinds = sorted(set(counts_s) | set(counts_m))
        diff = ", ".join(f"{k} {counts_s.get(k, 0)} vs {counts_m.get(k, 0)}" for k in kinds
                         if counts_s.get(k, 0) != counts_m.get(k, 0))
        return (f"{head}: another architecture ({weighted(stored)} layers with weights in the "
                f"checkpoint, {weighted(mine)} in the model; layers by kind, checkpoint vs "
                f"model: {diff})"), False
    differ = []
    for kind, layers in mine.items():
        for (name, shapes), saved in zip(layers, stored.get(kind, [])):
            if shapes != saved:
                differ.append((name, saved, shapes))
    reasons = []
    head_diff = [d for d in differ if d[0] == "classifier"]
    if head_diff and head_diff[0][1] and head_diff[0][1][0][:-1] == head_diff[0][2][0][:-1]:
        saved_n, mine_n = head_diff[0][1][0][-1], head_diff[0][2][0][-1]
        reasons.append(f"num_classes: its classifier has {saved_n} outputs, the model's "
                       f"{mine_n} (build with num_classes={saved_n}; include_top=False "
                       f"loads it too, with num_classes={saved_n})")
        differ = [d for d in differ if d[0] != "classifier"]
    if differ:
        name, saved, shapes = differ[0]
        reasons.append(f"another width or architecture: {len(differ)} layer(s) differ in "
                       f"shape, e.g. {name!r} {saved[0] if saved else '()'} in the checkpoint "
                       f"vs {shapes[0] if shapes else '()'} in the model")
    head_only = bool(reasons) and not differ
    if not reasons:
        reasons.append("its variables do not match the model's")
    return f"{head}: " + "; ".join(reasons), head_only


def load_weights(model, path: str | os.PathLike) -> None:
    """`model.load_weights(path)`; a checkpoint that does not fit is a WeightsMismatchError
    that names both and says why (see `explain_mismatch`)."""
    try:
        with warnings.catch_warnings():  # Keras warns once per layer while failing
            warnings.filterwarnings("ignore", message="Skipping nested container")
            model.load_weights(os.fspath(path))
    except ValueError as err:
        if str(path).endswith(".h5"):
            raise WeightsMismatchError(*_mismatch(model, path)) from None
        raise WeightsMismatchError(f"checkpoint {path} does not fit model {model.name!r}: "
                                   f"{str(err).splitlines()[0][:300]}") from None
