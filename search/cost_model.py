"""Linear latency cost models, one per hardware (paper section 5: latency ~ w . phi(alpha) + b).

phi(alpha) is a one-hot encoding of every decision coupled with the channel choices around it,
so the model is a SUM OF GATHERED WEIGHTS: prediction = bias + sum over slots of
weights[index_slot(alpha)] * present_slot(alpha). The slots are
  * per stage s:       (num_blocks, output ratio)                   -- presence / filters, head
  * per block (s, 0):  main (input ratio, expansion, kernel, type)  -- expand 1x1 + KxK dw, or
                                                                       the fused KxK conv
                       proj (input ratio, expansion, output ratio)  -- the 1x1 projection
  * per block (s, b>0) main (ratio, expansion, kernel, type) and proj (ratio, expansion),
                       shared by b = 1..3 (same shapes), counted when b < num_blocks.
The input ratio of a stage's first block is the previous stage's output ratio (the fixed
stem for stage 0): exactly the widths that set that block's layer shapes, so the encoding is
linear in what drives latency.

Fitting (ridge least squares with numpy) is two-level so that a few hundred measured
architectures suffice: first a low-dimensional "physical" model on the per-slot MAdds split by
layer type (1x1, depthwise 3x3 / 5x5, full 3x3 / 5x5 conv), activation volume and op count
(shared and per stage), then a ridge fit of the one-hot weights on its residual. Both are
folded into one weight per table entry, so prediction is the same gather either way.

    m = fit(rows, 'cpu_float')                     # or python -m search.cost_model --fit ...
    m.predict(choices)        # numpy, (N, D) or (D,) ints -> ms
    m.predict_tf(choices)     # TF ops only (gather / matmul): tf.function, tf.distribute
    m.save('zoo/cost_models/cpu_float.json'); load_cost_model('cpu_float')

This module computes; the held-out plot and printed summaries are search.cost_model_report,
the command line search.cost_model_cli (what `python -m search.cost_model` runs).
"""
from __future__ import annotations

import csv
import json
import logging
import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from mhmodels.cli import command
from mhmodels.registry import builtin_zoo_dir

from .space import EXPANSIONS, FILTER_RATIOS, KERNELS, NUM_BLOCKS

log = logging.getLogger("search.cost_model")

FORMAT_VERSION = 1
# The shipped cost models, found through the package (the checkout's zoo/ or the installed
# mhmodels/zoo/); read-only: refits go to a user directory.
DEFAULT_DIR = builtin_zoo_dir() / "cost_models"
PHYSICAL = ("ops", "pw_madds", "dw3_madds", "dw5_madds", "full3_madds", "full5_madds",
            "act_melems", "add_melems", "weights_m", "group3_madds", "group5_madds",
            "group_ops")
# group*_madds / group_ops: grouped KxK convs (the multi_hw_grouped space), their MAdds and
# group count (an Ethos-U runs each group as its own conv, the split form). Zero in the
# paper's space, so its fits and shipped models are unchanged.
# weights_m (millions of weights) matters on NPUs, which stream weights from flash or DRAM
# (Ethos-U55 in shared-SRAM mode reads them at 0.5 GB/s): their cost is not in the MAdds.


class CostModelError(ValueError):
    """A cost model file that does not fit the search space, or is malformed."""


# --------------------------------------------------------------------------------------------
# The host a CPU cost model describes.

# The host record lives in search.host (no search imports: the collector uses it too).
from .host import ISA_FEATURES, UNKNOWN_CPU, current_host, host_id  # noqa: E402,F401


def describe_host(host: Mapping[str, Any] | None) -> str:
    if not host:
        return "an unrecorded host"
    isa = "/".join(host.get("isa") or []) or "no listed ISA features"
    return (f"{host.get('cpu_model')} ({host.get('machine')}, {isa}, LiteRT "
            f"{host.get('litert_version') or '?'}, {host.get('threads')} thread(s))")


def is_cpu_model(model: "LinearCostModel") -> bool:
    """A cost model of this machine's CPU (LiteRT timings), whose numbers belong to a host."""
    config = model.hardware_config or {}
    if config.get("tool") == "litert":
        return True
    from .hardware import BUILTIN, LiteRTHardware
    return isinstance(BUILTIN.get(model.hardware), LiteRTHardware)


def host_mismatch(model: "LinearCostModel", host: Mapping[str, Any] | None = None
                  ) -> str | None:
    """One line saying how the host a CPU cost model was measured on differs from `host`
    (default: this one), or None when it matches or the model is not of a CPU.

    Compared: machine, ISA features, thread count, the CPU model when the record names one,
    and the LiteRT version."""
    if not is_cpu_model(model):
        return None
    threads = (model.hardware_config or {}).get("threads") or (model.host or {}).get("threads")
    here = dict(host) if host is not None else current_host(threads or 1)
    recorded = model.host
    fit = command("search.cost_model")
    if model.space_name == DEFAULT_SPACE:
        hint = f"calibrate it here: {fit} --calibrate --hardware={model.hardware}"
    else:  # --calibrate covers the paper space's models only
        hint = (f"refit it here: {command('search.collect_latency')} --hardware="
                f"{model.hardware} --space={model.space_name} ... && {fit} --fit ...")
    where = getattr(model, "source", None) or model.hardware
    if not recorded:
        return (f"cost model {where} records no host; this host is {describe_host(here)}: "
                f"its latencies may not hold here ({hint})")
    known = not str(recorded.get("cpu_model", UNKNOWN_CPU)).startswith(UNKNOWN_CPU)
    differ = [k for k in ("machine", "threads") if recorded.get(k) != here.get(k)]
    isa, isa_here = set(recorded.get("isa") or ()), set(here.get("isa") or ())
    # An unknown CPU's record lists the features known to have been there: a lower bound.
    if (isa != isa_here) if known else not isa <= isa_here:
        differ.append("isa")
    if known and recorded.get("cpu_model") != here.get("cpu_model"):
        differ.append("cpu_model")
    if recorded.get("litert_version") and recorded.get("litert_version") != \
            here.get("litert_version"):
        differ.append("litert_version")
    if not differ:
        return None
    return (f"cost model {where} was measured on {describe_host(recorded)}; this host is "
            f"{describe_host(here)} (differs in {', '.join(differ)}): its latencies may not "
            f"hold here ({hint})")


# --------------------------------------------------------------------------------------------
# Feature layout.

@dataclass(frozen=True)
class Slot:
    """One gathered term: index = offset + sum(mult * choices[col]); counted if present."""

    name: str
    offset: int
    size: int
    terms: tuple  # ((col, mult), ...)
    present: tuple | None  # (col, min_index): counted when choices[col] >= min_index


@dataclass
class FeatureLayout:
    slots: list
    num_features: int
    num_decisions: int
    descriptors: np.ndarray  # (num_features, len(PHYSICAL)) per-entry physical features
    entry_stage: np.ndarray  # (num_features,) stage of each entry
    # (num_decisions, max choices): each choice -> the lowest one decoding to the same
    # network (space.choice_representatives); every choice is read through it.
    representatives: np.ndarray | None = None

    def representative(self, choices: np.ndarray) -> np.ndarray:
        """`choices` (N, D) with every choice replaced by its representative."""
        if self.representatives is None:
            return choices
        return self.representatives[np.arange(choices.shape[1])[None, :], choices]

    def indices(self, choices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(N, num_slots) flat indices and (N, num_slots) 0/1 presence."""
        if not hasattr(self, "_np"):
            a, offsets, pcol, pmin = self.matrices()
            self._np = (a.astype(np.float64), offsets.astype(np.int64), pcol, pmin)
        a, offsets, pcol, pmin = self._np
        choices = self.representative(np.asarray(choices, np.int64))
        # Float matmul (BLAS) is exact here: indices are small integers.
        idx = (choices @ a).astype(np.int64) + offsets
        mask = (choices[:, pcol] >= pmin).astype(np.float64)
        return idx, mask

    def design(self, choices: np.ndarray) -> np.ndarray:
        """(N, num_features) counts of each table entry (the one-hot phi)."""
        idx, mask = self.indices(choices)
        x = np.zeros((choices.shape[0], self.num_features))
        rows = np.repeat(np.arange(choices.shape[0]), idx.shape[1])
        np.add.at(x, (rows, idx.reshape(-1)), mask.reshape(-1))
        return x

    def matrices(self):
        """(A (D, S) multipliers, offsets (S,), present cols (S,), present mins (S,))."""
        a = np.zeros((self.num_decisions, len(self.slots)), dtype=np.float32)
        offsets = np.zeros(len(self.slots), dtype=np.int32)
        pcol = np.zeros(len(self.slots), dtype=np.int32)
        pmin = np.zeros(len(self.slots), dtype=np.int32)
        for j, slot in enumerate(self.slots):
            offsets[j] = slot.offset
            for col, mult in slot.terms:
                a[col, j] += mult
            if slot.present is not None:
                pcol[j], pmin[j] = slot.present
        return a, offsets, pcol, pmin


def _out_size(size: int, stride: int) -> int:
    return -(-size // stride)


def _physical(**amounts: float) -> np.ndarray:
    """A descriptor in PHYSICAL order: the named amounts, zero elsewhere."""
    v = np.zeros(len(PHYSICAL))
    for k, val in amounts.items():
        v[PHYSICAL.index(k)] += val
    return v


def _main_descriptor(space, cin: int, e: int, k: int, block_type: str, stride: int, h_in: int,
                     h_out: int) -> np.ndarray:
    """A block's main part: the expand 1x1 + KxK depthwise (or grouped conv), or the fused
    (or fused-grouped) KxK conv; kind and group size as `space.block_kind` decodes them."""
    hid = cin * e
    kind, group_size = space.block_kind(block_type, cin, e, stride)
    groups = hid // group_size if group_size else 1
    conv = f"group{k}_madds" if group_size else f"full{k}_madds"
    extra = {"group_ops": groups} if group_size else {}
    if kind == "fused_ibn":
        if e == 1:
            return _physical()
        return _physical(ops=1, act_melems=h_out * h_out * hid / 1e6,
                         weights_m=k * k * cin * hid / groups / 1e6, **extra,
                         **{conv: h_out * h_out * k * k * cin * hid / groups / 1e6})
    if group_size:
        v = _physical(ops=1, act_melems=h_out * h_out * hid / 1e6, **extra,
                      weights_m=k * k * hid * hid / groups / 1e6,
                      **{conv: h_out * h_out * k * k * hid * hid / groups / 1e6})
    else:
        v = _physical(ops=1, act_melems=h_out * h_out * hid / 1e6, weights_m=k * k * hid / 1e6,
                      **{f"dw{k}_madds": h_out * h_out * k * k * hid / 1e6})
    if e != 1:
        v += _physical(ops=1, pw_madds=h_in * h_in * cin * hid / 1e6,
                       act_melems=h_in * h_in * hid / 1e6, weights_m=cin * hid / 1e6)
    return v


def _proj_descriptor(cin: int, e: int, cout: int, stride: int, h_out: int) -> np.ndarray:
    """A block's 1x1 projection, and the residual add when the shapes allow one."""
    v = _physical(ops=1, pw_madds=h_out * h_out * cin * e * cout / 1e6,
                  act_melems=h_out * h_out * cout / 1e6, weights_m=cin * e * cout / 1e6)
    if stride == 1 and cin == cout:
        v += _physical(ops=1, add_melems=h_out * h_out * cout / 1e6)
    return v


class _Tables:
    """The layout as it is laid out: slots, and one descriptor and stage per table entry."""

    def __init__(self, space):
        self.space = space
        self.slots: list[Slot] = []
        self.desc: list[np.ndarray] = []
        self.stage_of: list[int] = []
        self.offset = 0

    def add(self, name: str, shape: tuple, terms: list, present: tuple | None,
            describe, stage: int) -> int:
        """A new table of `shape` read by a slot; `describe(multi_index)` gives each entry's
        physical descriptor. -> the table's offset."""
        start, size = self.offset, int(np.prod(shape))
        self.slots.append(Slot(name, start, size, tuple(terms), present))
        for flat in range(size):
            self.desc.append(describe(np.unravel_index(flat, shape)))
            self.stage_of.append(stage)
        self.offset += size
        return start

    def share(self, name: str, offset: int, size: int, terms: list,
              present: tuple | None) -> None:
        """A slot that reads an existing table (blocks of one shape share their weights)."""
        self.slots.append(Slot(name, offset, size, tuple(terms), present))

    def layout(self) -> FeatureLayout:
        return FeatureLayout(self.slots, self.offset, len(self.space.decisions),
                             np.asarray(self.desc), np.asarray(self.stage_of),
                             self.space.choice_representatives())


def _add_stage_table(tables: _Tables, s: int, h_out: int) -> None:
    """Stage s's (num_blocks, output ratio) table: the last stage's also carries the fixed
    head 1x1 conv, which reads that stage's output."""
    space, ix, nr = tables.space, tables.space.index, len(FILTER_RATIOS)
    last = s == len(space.stages) - 1

    def describe(t):
        f = space.stage_filters(s, t[1])
        if last:
            return _physical(ops=1, pw_madds=h_out * h_out * f * space.head_filters / 1e6,
                             act_melems=h_out * h_out * f / 1e6,
                             weights_m=f * space.head_filters / 1e6)
        return _physical()
    terms = [(ix[f"stage{s}/num_blocks"], nr), (ix[f"stage{s}/filter_ratio"], 1)]
    tables.add(f"stage{s}", (len(NUM_BLOCKS), nr), terms, None, describe, s)


def _block_columns(ix: Mapping[str, int], s: int, b: int) -> tuple[int, int, int]:
    """The (expansion, kernel, type) decision columns of block b of stage s."""
    return tuple(ix[f"stage{s}/block{b}/{f}"] for f in ("expansion", "kernel", "type"))


def _add_first_block(tables: _Tables, s: int, stride: int, h_in: int, h_out: int) -> None:
    """Block 0 of stage s, the one that may stride: its input width is the previous stage's
    output ratio (the fixed stem for stage 0), a dimension of both of its tables."""
    space, ix = tables.space, tables.space.index
    types = space.block_types
    nr, ne, nk, nt = len(FILTER_RATIOS), len(EXPANSIONS), len(KERNELS), len(types)
    e_c, k_c, t_c = _block_columns(ix, s, 0)
    prev = ix[f"stage{s - 1}/filter_ratio"] if s > 0 else None
    nin = 1 if s == 0 else nr

    def cin_of(rin):
        return space.stem_filters if s == 0 else space.stage_filters(s - 1, rin)
    terms = [(e_c, nk * nt), (k_c, nt), (t_c, 1)] + \
        ([] if prev is None else [(prev, ne * nk * nt)])
    tables.add(f"stage{s}/block0/main", (nin, ne, nk, nt), terms, None,
               lambda t: _main_descriptor(space, cin_of(t[0]), EXPANSIONS[t[1]], KERNELS[t[2]],
                                          types[t[3]], stride, h_in, h_out), s)
    terms = [(e_c, nr), (ix[f"stage{s}/filter_ratio"], 1)] + \
        ([] if prev is None else [(prev, ne * nr)])
    tables.add(f"stage{s}/block0/proj", (nin, ne, nr), terms, None,
               lambda t: _proj_descriptor(cin_of(t[0]), EXPANSIONS[t[1]],
                                          space.stage_filters(s, t[2]), stride, h_out), s)


def _add_later_blocks(tables: _Tables, s: int, h_out: int) -> None:
    """Blocks 1.. of stage s: stride 1 at the stage's own width, so they have one shape and
    share one (main, proj) table pair; block b counts when the stage has more than b blocks."""
    space, ix = tables.space, tables.space.index
    types = space.block_types
    nr, ne, nk, nt = len(FILTER_RATIOS), len(EXPANSIONS), len(KERNELS), len(types)
    nb, rc = ix[f"stage{s}/num_blocks"], ix[f"stage{s}/filter_ratio"]
    main_off = proj_off = None
    for b in range(1, max(NUM_BLOCKS)):
        e_c, k_c, t_c = _block_columns(ix, s, b)
        main_terms = [(rc, ne * nk * nt), (e_c, nk * nt), (k_c, nt), (t_c, 1)]
        proj_terms = [(rc, ne), (e_c, 1)]
        if b > 1:  # blocks 2, 3 read block 1's tables
            tables.share(f"stage{s}/block{b}/main", main_off, nr * ne * nk * nt, main_terms,
                         (nb, b))
            tables.share(f"stage{s}/block{b}/proj", proj_off, nr * ne, proj_terms, (nb, b))
            continue
        main_off = tables.add(
            f"stage{s}/rest/main", (nr, ne, nk, nt), main_terms, (nb, b),
            lambda t: _main_descriptor(space, space.stage_filters(s, t[0]), EXPANSIONS[t[1]],
                                       KERNELS[t[2]], types[t[3]], 1, h_out, h_out), s)
        proj_off = tables.add(
            f"stage{s}/rest/proj", (nr, ne), proj_terms, (nb, b),
            lambda t: _proj_descriptor(space.stage_filters(s, t[0]), EXPANSIONS[t[1]],
                                       space.stage_filters(s, t[0]), 1, h_out), s)


def build_layout(space, image_size: int) -> FeatureLayout:
    """The slots and per-entry physical descriptors for `space` at `image_size`: per stage,
    its (num_blocks, ratio) table, block 0's tables, then the tables blocks 1.. share."""
    tables = _Tables(space)
    size = _out_size(image_size, 2)  # after the stem
    for s, stage in enumerate(space.stages):
        h_out = _out_size(size, stage.stride)
        _add_stage_table(tables, s, h_out)
        _add_first_block(tables, s, stage.stride, size, h_out)
        _add_later_blocks(tables, s, h_out)
        size = h_out
    return tables.layout()


# --------------------------------------------------------------------------------------------
# The model.

@dataclass
class LinearCostModel:
    """latency_ms = bias + sum of gathered weights (see module doc)."""

    hardware: str
    space_name: str
    weights: np.ndarray
    bias: float
    normalizer_ms: float | None
    image_size: int = 224
    version: str = "1"
    decision_sizes: tuple = ()
    statistic: str = "min_ms"
    metrics: dict = field(default_factory=dict)  # held-out spearman / mape, sizes, lambdas
    # search.hardware config() of the measurements it was fitted on (tool, versions, vela
    # accelerator / system / memory mode, LiteRT settings); None for CSV / older files.
    hardware_config: dict | None = None
    # current_host() of the machine a CPU model's latencies were measured on (None: unknown
    # or not a CPU); see host_mismatch.
    host: dict | None = None

    def __post_init__(self):
        from .space import get_space
        self.weights = np.asarray(self.weights, dtype=np.float64).reshape(-1)
        self.space = get_space(self.space_name)
        sizes = tuple(self.space.num_choices)
        if self.decision_sizes and tuple(self.decision_sizes) != sizes:
            raise CostModelError(
                f"cost model for {self.hardware!r} was fitted on a {self.space_name!r} space "
                f"with {len(self.decision_sizes)} decisions of sizes {list(self.decision_sizes)}"
                f"; the current space has {len(sizes)} decisions of sizes {list(sizes)}: refit "
                f"it ({command('search.cost_model')} --fit)")
        self.decision_sizes = sizes
        self._sizes = np.asarray(sizes, dtype=np.int64)
        self.layout = build_layout(self.space, self.image_size)
        if self.weights.shape[0] != self.layout.num_features:
            raise CostModelError(f"cost model for {self.hardware!r} has {self.weights.shape[0]} "
                                 f"weights; the {self.space_name!r} layout needs "
                                 f"{self.layout.num_features}")
        self._tf_consts = None

    @property
    def num_features(self) -> int:
        return self.layout.num_features

    def _check(self, choices) -> np.ndarray:
        arr = np.asarray(choices)
        if arr.dtype.kind not in "iu":
            if arr.dtype.kind not in "fb" or np.any(arr != np.round(arr)):
                raise ValueError("choices must be integer indices")
            arr = arr.astype(np.int64)
        if arr.ndim not in (1, 2) or arr.shape[-1] != self._sizes.shape[0]:
            raise ValueError(f"choices must have shape (D,) or (N, D) with D = "
                             f"{self._sizes.shape[0]}, got {arr.shape}")
        if (arr < 0).any() or (arr >= self._sizes).any():
            raise ValueError("choice index out of range for the space's decisions")
        return arr

    def predict(self, choices) -> np.ndarray | float:
        """Latency in ms of (N, D) choices -> (N,); of one (D,) vector -> float."""
        arr = self._check(choices)
        if arr.ndim == 1:
            idx, mask = self.layout.indices(arr[None, :])
            return float(self.bias + self.weights[idx[0]] @ mask[0])
        idx, mask = self.layout.indices(arr)
        return self.bias + np.einsum("ns,ns->n", self.weights[idx], mask)

    def predict_normalized(self, choices):
        if not self.normalizer_ms:
            raise ValueError(f"cost model {self.hardware!r} has no normalizer_ms")
        return self.predict(choices) / self.normalizer_ms

    def tf_constants(self):
        import tensorflow as tf
        a, offsets, pcol, pmin = self.layout.matrices()
        rep = self.layout.representatives
        return dict(a=tf.constant(a), offsets=tf.constant(offsets), pcol=tf.constant(pcol),
                    pmin=tf.constant(pmin), w=tf.constant(self.weights, tf.float32),
                    bias=tf.constant(self.bias, tf.float32),
                    rep=None if rep is None else tf.constant(rep.reshape(-1), tf.int32),
                    rep_width=0 if rep is None else rep.shape[1])

    def predict_tf(self, choices):
        """TF ops only: int tensor (D,) -> scalar, (N, D) -> (N,), float32 milliseconds.

        Usable inside `tf.function` and `strategy.run` (constants are created in the calling
        graph; no numpy or Python-side data dependence on `choices`). Out-of-range choices
        are not checked here (tf.gather on CPU errors, elsewhere it may return 0).
        """
        import tensorflow as tf
        c = self.tf_constants()
        x = tf.convert_to_tensor(choices)
        single = x.shape.rank == 1
        x2 = tf.reshape(x, [1, -1]) if single else x
        xi = tf.cast(x2, tf.int32)
        if c["rep"] is not None:  # each choice read as its representative (see indices)
            xi = tf.gather(c["rep"], xi + c["rep_width"] * tf.range(tf.shape(xi)[1])[None, :])
        xf = tf.cast(xi, tf.float32)
        idx = tf.cast(tf.round(tf.matmul(xf, c["a"])), tf.int32) + c["offsets"][None, :]
        present = tf.cast(tf.gather(xi, c["pcol"], axis=1) >= c["pmin"][None, :], tf.float32)
        out = c["bias"] + tf.reduce_sum(tf.gather(c["w"], idx) * present, axis=1)
        return out[0] if single else out

    # -- persistence --------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {
            "format_version": FORMAT_VERSION,
            "kind": "linear_gather",
            "hardware": self.hardware,
            "version": self.version,
            "space": {"name": self.space_name, "num_decisions": len(self.decision_sizes),
                      "decision_sizes": list(self.decision_sizes)},
            "image_size": self.image_size,
            "statistic": self.statistic,
            "hardware_config": self.hardware_config,
            "host": self.host,
            "normalizer_ms": self.normalizer_ms,
            "num_features": self.num_features,
            "feature_spec": [{"name": s.name, "offset": s.offset, "size": s.size,
                              "terms": [list(t) for t in s.terms],
                              "present": None if s.present is None else list(s.present)}
                             for s in self.layout.slots],
            "metrics": {k: v for k, v in self.metrics.items() if not k.startswith("_")},
            "bias": round(float(self.bias), 6),
            "weights": [round(float(w), 5) for w in self.weights],
        }

    def save(self, path: str | os.PathLike) -> Path:
        """Write atomically (never over a file shipped with mhmodels)."""
        from mhmodels.files import atomic_write, refuse_shipped
        path = Path(path)
        refuse_shipped(path, "another path")
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, json.dumps(self.to_dict(), indent=1) + "\n")
        return path

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "<dict>") -> "LinearCostModel":
        if not isinstance(data, Mapping):
            raise CostModelError(f"{source}: expected a JSON object")
        if data.get("format_version") != FORMAT_VERSION:
            raise CostModelError(f"{source}: format_version {data.get('format_version')!r} is "
                                 f"not supported (expected {FORMAT_VERSION})")
        try:
            space = data["space"]
            model = cls(hardware=data["hardware"], space_name=space["name"],
                        weights=np.asarray(data["weights"], dtype=np.float64),
                        bias=float(data["bias"]), normalizer_ms=data.get("normalizer_ms"),
                        image_size=int(data["image_size"]), version=str(data.get("version", "1")),
                        decision_sizes=tuple(space["decision_sizes"]),
                        statistic=data.get("statistic", "min_ms"),
                        metrics=dict(data.get("metrics", {})),
                        hardware_config=data.get("hardware_config"),
                        host=data.get("host"))
        except CostModelError as err:
            raise CostModelError(f"{source}: {err}") from None
        except (KeyError, TypeError, ValueError) as err:
            raise CostModelError(f"{source}: malformed cost model ({type(err).__name__}: "
                                 f"{err})") from None
        spec = data.get("feature_spec")
        if spec is not None:
            names = [s["name"] for s in spec]
            if names != [s.name for s in model.layout.slots] or \
                    [s["offset"] for s in spec] != [s.offset for s in model.layout.slots]:
                raise CostModelError(f"{source}: its feature layout differs from this version's "
                                     "layout for the space: refit it")
        return model


def cost_model_dirs(directory: str | os.PathLike | None = None) -> list[Path]:
    """Where `load_cost_model` looks: `directory` if given, else the user's refits
    (`$MHMODELS_HOME/cost_models`) before the shipped `zoo/cost_models/`."""
    if directory:
        return [Path(directory)]
    from mhmodels.files import user_cost_model_dir
    return [user_cost_model_dir(), Path(DEFAULT_DIR)]


DEFAULT_SPACE = "multi_hw"


def model_file_name(hardware_id: str, space_name: str = DEFAULT_SPACE) -> str:
    """`<hardware>.json` for the paper's space, `<hardware>.<space>.json` for another (e.g.
    ethos_u55.multi_hw_grouped.json): the loader finds a model by (hardware, space)."""
    return f"{hardware_id}.json" if space_name == DEFAULT_SPACE else \
        f"{hardware_id}.{space_name}.json"


def space_label(space_name: str) -> str:
    """The name a space's cost model files carry: a registered space's, or a reduced space's
    own name (from its file's "name" when given by path, never the path)."""
    from .space import get_space
    return get_space(space_name).name


def calibrated_file_name(hardware: str, host: Mapping[str, Any] | None = None) -> str | None:
    """`<hardware>@<host id>.json`: the name `calibrate_cost_model` gives a CPU hardware's
    model calibrated on `host` (default: this one); None for hardware that is not this CPU."""
    from .hardware import BUILTIN, LiteRTHardware
    hw = BUILTIN.get(str(hardware))
    if not isinstance(hw, LiteRTHardware):
        return None
    return f"{hw.name}@{host_id(host or current_host(hw.threads))}.json"


def load_cost_model(hardware: str, directory: str | os.PathLike | None = None,
                    space=None) -> LinearCostModel:
    """Load `<hardware>.json` from `cost_model_dirs(directory)` (the first that has it); for
    this machine's CPU hardware a model calibrated on this host (`calibrated_file_name`) in
    any of those directories comes first.

    `hardware` may also be a path to a .json file or `csv:<path>` (its id is the file stem).
    With `space` given, its name and decision sizes must match the file's. A reduced space
    (`search.space.ReducedSpace`: a mask over a base space, same decisions and indices) reads
    a model fitted on its own data (`<hardware>.<reduced name>.json`) first, else its base
    space's unchanged: the check is against the base. The file read is in the model's
    `source`; a space other than multi_hw is looked up as `<hardware>.<space>.json`
    (`model_file_name`) first.
    """
    from .hardware import hardware_id
    from .space import base_space
    if str(hardware).endswith(".json"):
        path = Path(hardware)
    else:
        names = [f"{hardware_id(hardware)}.json"]
        for s in ([] if space is None else [base_space(space), space]):  # own name first
            name = model_file_name(hardware_id(hardware), s.name)
            if s.name != DEFAULT_SPACE and name not in names:
                names.insert(0, name)
        calibrated = calibrated_file_name(hardware)
        if calibrated and (space is None or base_space(space).name == DEFAULT_SPACE):
            # a model calibrated on this very host beats every other
            names.insert(0, calibrated)
        candidates = [d / n for n in names for d in cost_model_dirs(directory)]
        path = next((c for c in candidates if c.is_file()), candidates[-1])
    if not path.is_file():
        available = sorted({p.stem for d in cost_model_dirs(directory) if d.is_dir()
                            for p in d.glob("*.json")})
        raise FileNotFoundError(f"no cost model for hardware {hardware!r} in "
                                f"{', '.join(str(d) for d in cost_model_dirs(directory))} "
                                f"(available: {', '.join(available) or 'none'}); collect and "
                                f"fit one: {command('search.collect_latency')} ... && "
                                f"{command('search.cost_model')} --fit ...")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise CostModelError(f"{path}: not valid JSON: {err}") from None
    model = LinearCostModel.from_dict(data, source=str(path))
    check_hardware_config(model, hardware, source=str(path))
    if space is not None:
        if base_space(space) is not space:
            log.debug("space %s uses its base space %s's cost model %s", space.name,
                      base_space(space).name, path)
        space = base_space(space)  # a reduced space predicts with its base space's model
    if space is not None and space.name != model.space_name and str(hardware).endswith(".json"):
        raise CostModelError(f"{path} is fitted for space {model.space_name!r}, not "
                             f"{space.name!r}")
    if space is not None and space.name != model.space_name:
        reduced = _reduced_spaces_with_a_model(hardware_id(hardware), space.name, directory)
        hint = (f"; the reduced space {', '.join(reduced)} has one (--space={reduced[0]})"
                if reduced else "")
        raise CostModelError(
            f"no {hardware_id(hardware)} cost model for space {space.name!r} in "
            f"{', '.join(str(d) for d in cost_model_dirs(directory))} (the one found, {path}, "
            f"is fitted for {model.space_name!r}){hint}; collect and fit one: "
            f"{command('search.collect_latency')} --space={space.name} ... && "
            f"{command('search.cost_model')} --fit --space={space.name} ...")
    if space is not None and tuple(space.num_choices) != tuple(model.decision_sizes):
        raise CostModelError(f"{path}: fitted for space {model.space_name!r} with decision sizes "
                             f"{list(model.decision_sizes)}, not {space.name!r} with "
                             f"{list(space.num_choices)}")
    model.source = str(path)
    return model


def _reduced_spaces_with_a_model(hardware: str, base: str, directory) -> list[str]:
    """Shipped reduced spaces of `base` that have their own `hardware` model somewhere."""
    from .space import SHIPPED_SPACES_DIR
    names = sorted(p.stem for p in SHIPPED_SPACES_DIR.glob(f"{base}@*.json"))
    return [n for n in names if any((d / model_file_name(hardware, n)).is_file()
                                    for d in cost_model_dirs(directory))]


def check_hardware_config(model: LinearCostModel, hardware: str, source: str) -> None:
    """A cost model must describe the hardware it is used for: the same vela accelerator,
    system config and memory mode, the same LiteRT settings and grouped-conv form (one network
    prices differently split and native). Another tool version only warns (its numbers may
    have moved); files without a recorded configuration (or key) are accepted."""
    from .hardware import CSV_PREFIX, get_hardware, uncompared_keys
    recorded = model.hardware_config
    if recorded is None or str(hardware).endswith(".json") or \
            str(hardware).startswith(CSV_PREFIX):
        return
    current = get_hardware(hardware).config()
    skip = uncompared_keys(current, recorded)
    versions = {k for k in set(current) | set(recorded) if k.endswith("_version")}
    differ = sorted(k for k in (set(current) | set(recorded)) - skip - versions
                    if current.get(k) != recorded.get(k))
    if differ:
        raise CostModelError(
            f"{source}: fitted on {hardware} configured as "
            f"{ {k: recorded.get(k) for k in differ} }, but {hardware} is now "
            f"{ {k: current.get(k) for k in differ} }: refit it on data of this configuration")
    moved = sorted(k for k in versions if current.get(k) != recorded.get(k))
    if moved:
        import warnings
        warnings.warn(f"{source}: fitted with {', '.join(f'{k} {recorded.get(k)}' for k in moved)}"
                      f"; installed: {', '.join(f'{k} {current.get(k)}' for k in moved)}",
                      stacklevel=3)


# --------------------------------------------------------------------------------------------
# Fitting.

def spearman(a, b) -> float:
    from scipy.stats import spearmanr
    return float(spearmanr(np.asarray(a), np.asarray(b)).correlation)


def mape(pred, true) -> float:
    pred, true = np.asarray(pred, float), np.asarray(true, float)
    return float(np.mean(np.abs(pred - true) / true) * 100.0)


def _ridge(x: np.ndarray, y: np.ndarray, lam: float, scale: np.ndarray | None = None,
           sample_weight: np.ndarray | None = None):
    """min sum_i s_i (y_i - b - x_i w)^2 + lam |w / scale|^2 (b unpenalised) -> (w, b)."""
    n, f = x.shape
    sw = np.ones(n) if sample_weight is None else sample_weight / np.mean(sample_weight)
    xm = (sw[:, None] * x).sum(0) / sw.sum()
    ym = float((sw * y).sum() / sw.sum())
    r = np.sqrt(sw)[:, None]
    s = np.ones(f) if scale is None else scale
    xs = (x - xm) * s * r
    yc = (y - ym) * r[:, 0]
    if f <= n:
        w = np.linalg.solve(xs.T @ xs + lam * np.eye(f), xs.T @ yc)
    else:  # dual form
        w = xs.T @ np.linalg.solve(xs @ xs.T + lam * np.eye(n), yc)
    w = w * s
    return w, float(ym - xm @ w)


class _Fitter:
    """Three nested levels, each fitted by weighted ridge on the previous levels' residual:
    0. shared physical model: total and per-layer-type MAdds, activation volume, op count;
    1. the same descriptors per stage (what differs between resolutions / channel counts);
    2. the one-hot table weights themselves.
    Level 0 is lightly regularised; levels 1 and 2 get lambdas chosen by cross-validation (None
    leaves a level out), so a few dozen architectures give a physical model and a few hundred
    refine it. Every level is a linear map of the one-hot counts, so they fold into one weight
    per table entry."""

    def __init__(self, layout: FeatureLayout, num_stages: int):
        d = layout.descriptors
        madds = [i for i, name in enumerate(PHYSICAL) if name.endswith("_madds")]
        # Total MAdds beside the per-type columns: ridge then prefers one shared ms/MAdd rate
        # and only departs from it per layer type where the data asks for it.
        self.shared = np.concatenate([d, d[:, madds].sum(1, keepdims=True)], axis=1)
        self.per_stage = np.concatenate(
            [d * (layout.entry_stage == s)[:, None] for s in range(num_stages)], axis=1)

    @staticmethod
    def _level(z, y, lam, sw):
        std = np.sqrt(np.average(np.square(z - np.average(z, axis=0, weights=sw)), axis=0,
                                 weights=sw))
        scale = np.where(std > 1e-12, 1.0 / np.maximum(std, 1e-12), 0.0)
        return _ridge(z, y, lam, scale, sw)

    def fit(self, x, y, lam1, lam2, lam0=0.01):
        sw = 1.0 / np.square(y)  # relative errors: small and large models count alike
        theta0, b = self._level(x @ self.shared, y, lam0, sw)
        w = self.shared @ theta0
        if lam1 is not None:
            resid = y - b - x @ w
            theta1, b1 = self._level(x @ self.per_stage, resid, lam1, sw)
            w, b = w + self.per_stage @ theta1, b + b1
        if lam2 is not None:
            resid = y - b - x @ w
            w2, b2 = _ridge(x, resid, lam2, None, sw)
            w, b = w + w2, b + b2
        return w, b


def _oof_predictions(fitter, x, y, lam1, lam2, folds=5, seed=0, lam0=0.01) -> np.ndarray:
    """Out-of-fold predictions of a `folds`-fold cross-validation."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(y))
    folds = min(folds, len(y))
    pred = np.zeros(len(y))
    for k in range(folds):
        test = order[k::folds]
        train = np.setdiff1d(order, test)
        w, b = fitter.fit(x[train], y[train], lam1, lam2, lam0)
        pred[test] = x[test] @ w + b
    return pred


def _cv_error(fitter, x, y, lam1, lam2, folds=5, seed=0, lam0=0.01):
    pred = _oof_predictions(fitter, x, y, lam1, lam2, folds, seed, lam0)
    return float(np.mean(np.abs(pred - y) / y))


def fit_arrays(layout: FeatureLayout, num_stages: int, choices: np.ndarray, y: np.ndarray,
               lam1=False, lam2=False, lam0=False):
    """Ridge fit with the level-1/2 lambdas chosen by 5-fold CV (relative error) unless given
    (None = level left out). -> (weights, bias, {lambdas, cv_mape})."""
    x = layout.design(choices)
    fitter = _Fitter(layout, num_stages)
    if lam0 is False:
        grid = [1e-3, 0.01, 0.1, 1.0, 10.0, 100.0]
        lam0 = min(grid, key=lambda l: _cv_error(fitter, x, y, None, None, lam0=l))
    if lam1 is False:
        grid = [None, 0.1, 1.0, 10.0, 100.0, 1000.0]
        lam1 = min(grid, key=lambda l: _cv_error(fitter, x, y, l, None, lam0=lam0))
    if lam2 is False:
        grid = [None, 1.0, 10.0, 100.0, 1000.0, 10000.0]
        lam2 = min(grid, key=lambda l: _cv_error(fitter, x, y, lam1, l, lam0=lam0))
    oof = _oof_predictions(fitter, x, y, lam1, lam2, lam0=lam0)
    w, b = fitter.fit(x, y, lam1, lam2, lam0)
    return w, b, {"lambda_physical": lam0, "lambda_stage": lam1, "lambda_onehot": lam2,
                  "cv_mape": round(mape(oof, y), 3), "cv_spearman": round(spearman(oof, y), 4),
                  "_oof": (y.tolist(), oof.tolist())}


MIN_FIT_ARCHS = 20  # fewer cannot be held out and cross-validated meaningfully


def read_dataset(path: str | os.PathLike, hardware: str, space) -> tuple:
    """(choices (N, D), latencies (N,), normaliser) from a collect_latency CSV.

    Every row must hold a valid architecture key and a positive latency; a row that does not
    is an error naming the file and line, never skipped. The `mobilenet_v1` row is the
    normaliser the search divides by: a file without one is an error. A file whose
    `.hardware.json` records another space (keys of one space can parse in another and mean
    other blocks) is an error.
    """
    from .collect_latency import read_space, space_record
    recorded, expected = read_space(path), space_record(space)
    if recorded is not None and [recorded.get(k) for k in expected] != list(expected.values()):
        raise ValueError(f"{path} holds architectures of space {recorded.get('name')!r}, not "
                         f"{expected['name']!r}: fit it with "
                         f"--space={recorded.get('name')}")
    column = f"{hardware}_ms"
    choices, lat, normalizer, sizes, lines = [], [], None, set(), []
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        fields = reader.fieldnames or []
        if column not in fields and "latency_ms" in fields:
            column = "latency_ms"  # the csv:<path> hardware format: arch,latency_ms
        if column not in fields or "arch" not in fields:
            raise ValueError(f"{path} has no column {column if 'arch' in fields else 'arch'!r} "
                             f"(columns: {fields})")
        for row in reader:
            where = f"{path}, line {reader.line_num}"
            text = row.get(column)
            try:
                value = float(text)
            except (TypeError, ValueError):
                raise ValueError(f"{where}: {column} {text!r} is not a number") from None
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{where}: {column} {value} must be a positive number of ms")
            if row.get("image_size"):
                sizes.add(row["image_size"].strip())
            if row["arch"] == "mobilenet_v1":
                normalizer = value
                continue
            try:
                choices.append(space.parse(row["arch"]))
            except (ValueError, TypeError, IndexError) as err:
                raise ValueError(f"{where}: architecture {row['arch']!r} is not a key of the "
                                 f"{space.name!r} space: {err}") from None
            lat.append(value)
            lines.append(reader.line_num)
    if len(sizes) > 1:
        raise ValueError(f"{path} mixes image sizes {sorted(int(x) for x in sizes)}; fit one size")
    if not lat:
        raise ValueError(f"{path}: no measured architectures for {hardware}")
    if normalizer is None:
        raise ValueError(f"{path} has no mobilenet_v1 row: the search normalises latencies by "
                         "MobileNetV1's (collect_latency measures it first)")
    choices, lat = merge_duplicates(space, choices, lat, lines, path)
    return choices, lat, normalizer


# Repeated measurements of one architecture further apart than this are an error in the data
# (another host, another configuration, a broken row), not timing noise (+-15% here).
MAX_DUPLICATE_RATIO = 1.5


def merge_duplicates(space, choices, latencies, lines, source) -> tuple[np.ndarray, np.ndarray]:
    """One row per distinct architecture (`space.canonical`): repeated measurements that agree
    within MAX_DUPLICATE_RATIO are averaged with a one-line warning; ones that do not are a
    ValueError naming the lines. Keeps a repeated architecture from counting twice and from
    sitting on both sides of a held-out split."""
    groups: dict[str, list[int]] = {}
    for i, c in enumerate(choices):
        groups.setdefault(space.encode(space.canonical(np.asarray(c))), []).append(i)
    repeated = [g for g in groups.values() if len(g) > 1]
    for g in repeated:
        values = [latencies[i] for i in g]
        if max(values) > MAX_DUPLICATE_RATIO * min(values):
            raise ValueError(
                f"{source}: lines {', '.join(str(lines[i]) for i in g)} measure the same "
                f"architecture at {', '.join(f'{v:g}' for v in values)} ms (more than "
                f"{MAX_DUPLICATE_RATIO}x apart): remove the wrong measurement")
    if repeated:
        print(f"warning: {source}: {sum(len(g) for g in repeated)} rows measure "
              f"{len(repeated)} architectures more than once; fitting their mean "
              f"({len(groups)} distinct architectures)", file=sys.stderr)
    keep = [g[0] for g in groups.values()]
    return (np.asarray([choices[i] for i in keep]),
            np.asarray([float(np.mean([latencies[i] for i in g])) for g in groups.values()]))


def data_paths(data: str | os.PathLike | Sequence[str | os.PathLike]) -> list[Path]:
    """One collected CSV, or several (a sequence, or one string of comma-separated paths)."""
    if data is None:
        raise ValueError("no latency data: pass at least one collect_latency CSV")
    if isinstance(data, os.PathLike):
        return [Path(data)]
    items = data.split(",") if isinstance(data, str) else list(data)
    paths = [Path(p) for p in (str(i).strip() for i in items) if p]
    if not paths:
        raise ValueError("no latency data: pass at least one collect_latency CSV")
    return paths


def read_datasets(data, hardware: str, space) -> tuple:
    """`read_dataset` over one or several collections of `hardware` (streams collected
    apart, e.g. into files of different column sets): the rows pooled, one per architecture
    (`merge_duplicates` across the files), the normalisers' mean. Refused unless every file
    records the same configuration of `hardware` and the same image size: data measured
    differently is not one dataset."""
    paths = data_paths(data)
    if len(paths) == 1:
        return read_dataset(paths[0], hardware, space)
    from .collect_latency import config_path, read_config, read_host
    from .hardware import same_config
    for path in paths:  # before the configurations: a missing file has none to compare
        if not path.is_file():
            raise FileNotFoundError(f"{path} does not exist")
    first = paths[0]
    config, host, size = (read_config(first) or {}).get(hardware), read_host(first), \
        image_size_of(first)
    choices, lat, labels, normalizers = [], [], [], []
    for path in paths:
        other = (read_config(path) or {}).get(hardware)
        if other is None:
            raise ValueError(f"{path}: {config_path(path).name} records no {hardware} "
                             "configuration, so its rows cannot be pooled with another file's")
        if not same_config(other, config):
            raise ValueError(f"{path} measured {hardware} configured as {other}, {first} as "
                             f"{config}: data of different configurations cannot be pooled")
        if config and config.get("tool") == "litert" and \
                host_id(read_host(path)) != host_id(host):
            raise ValueError(f"{path} was timed on {describe_host(read_host(path))}, {first} "
                             f"on {describe_host(host)}: CPU timings of two hosts cannot be "
                             "pooled")
        if image_size_of(path) != size:
            raise ValueError(f"{path} holds {image_size_of(path)}x{image_size_of(path)} "
                             f"inputs, {first} {size}x{size}: fit one size")
        c, y, normalizer = read_dataset(path, hardware, space)
        choices.extend(c)
        lat.extend(y)
        labels.extend(f"{path.name}:{i}" for i in range(len(y)))
        normalizers.append(normalizer)
    if max(normalizers) > MAX_DUPLICATE_RATIO * min(normalizers):
        raise ValueError(f"{', '.join(map(str, paths))}: their mobilenet_v1 rows "
                         f"({', '.join(f'{v:g}' for v in normalizers)} ms) disagree")
    choices, lat = merge_duplicates(space, choices, lat, labels, ", ".join(map(str, paths)))
    return choices, lat, float(np.mean(normalizers))


def image_size_of(path) -> int:
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            return int(row.get("image_size") or 224)  # csv:<path> files: 224 unless a column
    return 224


def model_space(space_name: str):
    """The space a cost model of `space_name` is fitted for: a reduced space's base space
    (same decisions and choice indices), so the model serves the base and all its reductions."""
    from .space import base_space, get_space
    return base_space(get_space(space_name))


def fit(data: str | os.PathLike | None, hardware: str, space_name: str = "multi_hw",
        holdout: float = 0.2, seed: int = 0, version: str = "1") -> LinearCostModel:
    """Fit on `holdout`-split data to report held-out Spearman / MAPE, then refit on all rows."""
    from .hardware import CSV_PREFIX, hardware_id
    space = model_space(space_name)
    space_name = space.name
    is_csv = hardware.startswith(CSV_PREFIX)
    if is_csv:  # csv:<path>: latencies measured elsewhere
        data = hardware[len(CSV_PREFIX):]  # its own file (--data is for collected CSVs)
        hardware = hardware_id(hardware)
    paths = data_paths(data)
    choices, y, normalizer = read_datasets(paths, hardware, space)
    if len(y) < MIN_FIT_ARCHS:
        raise ValueError(f"{', '.join(map(str, paths))}: {len(y)} architectures measured for "
                         f"{hardware}; a fit needs at least {MIN_FIT_ARCHS} (held-out and "
                         f"5-fold CV checks), {command('search.collect_latency')} "
                         "--num_archs=200 appends more")
    image_size = image_size_of(paths[0])
    layout = build_layout(space, image_size)
    n = len(y)
    rng = np.random.default_rng(seed)
    order = rng.permutation(n)
    n_test = max(2, int(round(holdout * n)))
    test, train = order[:n_test], order[n_test:]
    metrics: dict = {"num_archs": int(n)}
    if n_test:
        w, b, lams = fit_arrays(layout, len(space.stages), choices[train], y[train])
        lams.pop("_oof")
        pred = layout.design(choices[test]) @ w + b
        metrics.update(holdout_archs=int(n_test), train_archs=int(len(train)),
                       holdout_spearman=round(spearman(pred, y[test]), 4),
                       holdout_mape=round(mape(pred, y[test]), 3))
        metrics["_holdout"] = (y[test].tolist(), pred.tolist())
    w, b, lams = fit_arrays(layout, len(space.stages), choices, y)
    metrics.update({k: v for k, v in lams.items()})
    train_pred = layout.design(choices) @ w + b
    metrics["train_spearman"] = round(spearman(train_pred, y), 4)
    metrics["train_mape"] = round(mape(train_pred, y), 3)
    metrics["data"] = ",".join(p.name for p in paths)
    from .collect_latency import read_config
    from .hardware import get_hardware
    try:  # a column of a named hardware; another name is latencies measured elsewhere
        statistic = "as measured (csv)" if is_csv else get_hardware(hardware).statistic
    except ValueError:
        statistic = "as measured (csv)"
    config = None if is_csv else (read_config(paths[0]) or {}).get(hardware)
    host = None
    if not is_csv and (config or {}).get("tool") == "litert":
        from .collect_latency import read_host
        host = read_host(paths[0])
    return LinearCostModel(hardware=hardware, space_name=space_name, weights=w, bias=b,
                           normalizer_ms=normalizer, image_size=image_size, version=version,
                           decision_sizes=tuple(space.num_choices), statistic=statistic,
                           metrics=metrics, hardware_config=config, host=host)


# --------------------------------------------------------------------------------------------
# Host calibration.

MIN_CALIBRATION_ARCHS = 10
CALIBRATION_METHODS = ("rescale", "refit")


def _rescale(pred: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """(scale, offset) minimising the squared relative error of scale * pred + offset."""
    sw = 1.0 / np.square(y)
    a = np.stack([pred, np.ones_like(pred)], 1) * np.sqrt(sw)[:, None]
    scale, offset = np.linalg.lstsq(a, y * np.sqrt(sw), rcond=None)[0]
    return float(scale), float(offset)


def fit_calibration(choices: np.ndarray, y: np.ndarray, normalizer_ms: float, hardware: str,
                    image_size: int, base: LinearCostModel | None = None,
                    space_name: str = "multi_hw", folds: int = 5) -> LinearCostModel:
    """A cost model of this host from a calibration set: the better, by `folds`-fold
    cross-validated MAPE on the set's own architectures, of
      * rescale: the `base` (shipped) model's weights and bias times s, plus an offset
        (2 parameters: the host is faster or slower at everything alike);
      * refit: a full fit (`fit_arrays`) of the calibration set alone.
    The metrics record every candidate's held-out MAPE / Spearman, the base model unchanged
    included, and the chosen method."""
    space = model_space(space_name)
    space_name = space.name
    n = len(y)
    if n < MIN_CALIBRATION_ARCHS:
        raise ValueError(f"{hardware}: {n} calibration architectures; at least "
                         f"{MIN_CALIBRATION_ARCHS} are needed")
    layout = build_layout(space, image_size)
    x = layout.design(choices)
    usable_base = base is not None and base.image_size == image_size and \
        base.space_name == space_name
    order = np.random.default_rng(0).permutation(n)
    folds = min(folds, n)
    oof = {m: np.zeros(n) for m in CALIBRATION_METHODS}
    for k in range(folds):
        test = order[k::folds]
        train = np.setdiff1d(order, test)
        w, b, _ = fit_arrays(layout, len(space.stages), choices[train], y[train])
        oof["refit"][test] = x[test] @ w + b
        if usable_base:
            scale, offset = _rescale(base.predict(choices[train]), y[train])
            oof["rescale"][test] = scale * base.predict(choices[test]) + offset
    candidates = ("rescale", "refit") if usable_base else ("refit",)
    report = {m: {"holdout_mape": round(mape(oof[m], y), 3),
                  "holdout_spearman": round(spearman(oof[m], y), 4)} for m in candidates}
    if usable_base:
        shipped = base.predict(choices)
        report["base_unchanged"] = {"holdout_mape": round(mape(shipped, y), 3),
                                    "holdout_spearman": round(spearman(shipped, y), 4),
                                    "source": getattr(base, "source", None)}
    method = min(candidates, key=lambda m: report[m]["holdout_mape"])
    if method == "rescale":
        scale, offset = _rescale(base.predict(choices), y)
        w, b = base.weights * scale, base.bias * scale + offset
        report["rescale"].update(scale=round(scale, 5), offset_ms=round(offset, 5))
    else:
        w, b, _ = fit_arrays(layout, len(space.stages), choices, y)
    metrics = {"num_archs": int(n), "method": method, "folds": folds, "calibration": report,
               "holdout_mape": report[method]["holdout_mape"],
               "holdout_spearman": report[method]["holdout_spearman"]}
    from .hardware import get_hardware
    hw = get_hardware(hardware)
    return LinearCostModel(hardware=hardware, space_name=space_name, weights=w, bias=b,
                           normalizer_ms=float(normalizer_ms), image_size=image_size,
                           version="calibrated", decision_sizes=tuple(space.num_choices),
                           statistic=hw.statistic, metrics=metrics,
                           hardware_config=hw.config(),
                           host=current_host(getattr(hw, "threads", 1)))


def calibrate_cost_models(hardware: Sequence[str] = ("cpu_float", "cpu_int8"),
                          num_archs: int = 48, image_size: int = 224, rounds: int = 3,
                          seed: int = 0, output_dir: str | os.PathLike | None = None,
                          overrides: Mapping[str, Any] | None = None,
                          space_name: str = "multi_hw", progress: bool = True
                          ) -> dict[str, Path]:
    """Measure a calibration set on this host and write `<hw>@<host id>.json` per CPU
    hardware to `output_dir` (default `$MHMODELS_HOME/cost_models`, which `load_cost_model`
    prefers on this host). MobileNetV1 (the normaliser) and `num_archs` architectures
    (`collect_latency.calibration_keys`) are exported once and timed in `rounds` interleaved
    rounds (minimum kept), so the normaliser and the architectures share one scale; the
    measurements go to `<output_dir>/data/calibration_<host id>.csv`."""
    from mhmodels.files import check_writable_dir, refuse_shipped, user_cost_model_dir
    from .collect_latency import calibration_keys, measure_interleaved
    from .hardware import LiteRTHardware, parse_hardware_list
    from .space import get_space
    hws = parse_hardware_list(hardware)
    for hw in hws:
        if not isinstance(hw, LiteRTHardware):
            raise ValueError(f"--calibrate is for this machine's CPU (LiteRT hardware), not "
                             f"{hw.name!r}: NPU estimates and CSV latencies do not depend on "
                             "the host")
    if num_archs < MIN_CALIBRATION_ARCHS:
        raise ValueError(f"num_archs must be >= {MIN_CALIBRATION_ARCHS}, got {num_archs}")
    out = Path(output_dir) if output_dir else user_cost_model_dir()
    targets = {hw.name: out / calibrated_file_name(hw.name) for hw in hws}
    for target in targets.values():
        refuse_shipped(target, "--cost_model_dir")
    check_writable_dir(out, "--cost_model_dir")
    space = get_space(space_name)
    host = current_host(hws[0].threads)
    data = measure_interleaved(calibration_keys(space, num_archs, seed), hws,
                               out / "data" / f"calibration_{host_id(host)}.csv", image_size,
                               rounds, space_name, dict(overrides or {}), progress)
    written = {}
    space = model_space(space_name)  # sampled from `space_name`, fitted for its base
    for hw in hws:
        choices, y, normalizer = read_dataset(data, hw.name, space)
        try:
            base = LinearCostModel.from_dict(
                json.loads((Path(DEFAULT_DIR) / f"{hw.name}.json").read_text()),
                source=str(Path(DEFAULT_DIR) / f"{hw.name}.json"))
            base.source = str(Path(DEFAULT_DIR) / f"{hw.name}.json")
        except (OSError, CostModelError):
            base = None
        model = fit_calibration(choices, y, normalizer, hw.name, image_size, base, space.name)
        model.metrics["data"] = str(data)
        model.metrics["rounds"] = int(rounds)
        written[hw.name] = model.save(targets[hw.name])
    return written


def calibrate_cost_model(hardware: str, **kwargs) -> Path:
    """`calibrate_cost_models` for one CPU hardware: the path of its calibrated model."""
    return calibrate_cost_models([hardware], **kwargs)[hardware]


if __name__ == "__main__":  # python -m search.cost_model: the command is in cost_model_cli
    import runpy  # by name, not an import: cost_model_cli imports this module

    runpy.run_module(f"{__package__}.cost_model_cli", run_name="__main__", alter_sys=True)
