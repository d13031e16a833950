"""The multi-hardware search space (paper section 6.1), decoding to the zoo's spec format.

Centred on MobileNetV3-Large with SE and h-swish removed and channel counts that are multiples
of 32: a fixed 3x3 stem of 32, five searched stages with MobileNetV3-Large's strides, and the
fixed head (1x1 960 -> pool -> 1x1 1280). Per stage: number of blocks {1..4} and output-filter
ratio {0.5 .. 2.0} of the stage's base width; per block: expansion {1..6}, kernel {3, 5}, and
regular or fused inverted bottleneck. Multi-AVG and Multi-MAX are both points of this space.

An architecture is a vector of choice indices, one per `Decision`, in `space.decisions` order.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import math

import numpy as np

from mhmodels.spec import LayerSpec, ModelSpec, round8

FILTER_RATIOS = (0.5, 0.625, 0.75, 1.0, 1.25, 1.5, 2.0)
NUM_BLOCKS = (1, 2, 3, 4)
EXPANSIONS = (1, 2, 3, 4, 5, 6)
KERNELS = (3, 5)
BLOCK_TYPES = ("ibn", "fused_ibn")
CHANNEL_MULTIPLE = 32


@dataclass(frozen=True)
class Decision:
    """One independent categorical choice of the controller."""

    name: str
    choices: tuple

    @property
    def size(self) -> int:
        return len(self.choices)


@dataclass(frozen=True)
class Stage:
    base_filters: int
    stride: int

    def block_stride(self, block: int) -> int:
        """The stage's stride on its first block, 1 after."""
        return self.stride if block == 0 else 1


@dataclass(frozen=True)
class ActiveBlock:
    """A block that is present in a sampled architecture, with its channel choices."""

    stage: int
    index: int  # position within the stage
    in_filters: int
    filters: int
    in_ratio: int  # index into FILTER_RATIOS of the input (-1: the fixed stem)
    out_ratio: int
    expansion: int
    kernel: int
    kind: str  # ibn | fused_ibn, after the strided fused-e1 fallback
    stride: int
    group_size: int | None = None  # of a grouped KxK conv (the grouped spaces), else None


# Stage widths (x1.0): MobileNetV3-Large's 24/40/80/112/160 stages moved to multiples of 32.
MULTI_HW_STAGES = (Stage(32, 2), Stage(64, 2), Stage(128, 2), Stage(160, 1), Stage(192, 2))


class SearchSpace:
    """Decisions, sampling and decoding for one stage layout."""

    # The choices of every block's type decision (a subclass adds grouped types).
    block_types: tuple = BLOCK_TYPES

    def __init__(self, stages: Sequence[Stage] = MULTI_HW_STAGES, stem_filters: int = 32,
                 head_filters: int = 960, top_filters: int = 1280, name: str = "multi_hw"):
        self.name = name
        self.stages = tuple(stages)
        self.stem_filters = stem_filters
        self.head_filters = head_filters
        self.top_filters = top_filters
        decisions = []
        for s in range(len(self.stages)):
            decisions.append(Decision(f"stage{s}/num_blocks", NUM_BLOCKS))
            decisions.append(Decision(f"stage{s}/filter_ratio", FILTER_RATIOS))
            for b in range(max(NUM_BLOCKS)):
                decisions.append(Decision(f"stage{s}/block{b}/expansion", EXPANSIONS))
                decisions.append(Decision(f"stage{s}/block{b}/kernel", KERNELS))
                decisions.append(Decision(f"stage{s}/block{b}/type", self.block_types))
        self.decisions: tuple[Decision, ...] = tuple(decisions)
        self.index = {d.name: i for i, d in enumerate(self.decisions)}

    # -- sizes -------------------------------------------------------------------------------
    @property
    def num_choices(self) -> list[int]:
        return [d.size for d in self.decisions]

    def size(self) -> float:
        """Number of distinct choice vectors (an upper bound on distinct networks)."""
        return float(np.prod([float(n) for n in self.num_choices]))

    def stage_filters(self, stage: int, ratio_index: int) -> int:
        value = self.stages[stage].base_filters * FILTER_RATIOS[ratio_index]
        return max(CHANNEL_MULTIPLE, int(value / CHANNEL_MULTIPLE + 0.5) * CHANNEL_MULTIPLE)

    def max_stage_filters(self, stage: int) -> int:
        return max(self.stage_filters(stage, r) for r in range(len(FILTER_RATIOS)))

    # -- choices -----------------------------------------------------------------------------
    def check(self, choices: Sequence[int]) -> np.ndarray:
        arr = np.asarray(choices, dtype=np.int64).reshape(-1)
        if arr.shape[0] != len(self.decisions):
            raise ValueError(f"expected {len(self.decisions)} choices for space {self.name!r}, "
                             f"got {arr.shape[0]}")
        sizes = np.asarray(self.num_choices)
        bad = np.nonzero((arr < 0) | (arr >= sizes))[0]
        if bad.size:
            i = int(bad[0])
            raise ValueError(f"choice {int(arr[i])} out of range for {self.decisions[i].name} "
                             f"({sizes[i]} options)")
        return arr

    def sample(self, rng: np.random.Generator) -> np.ndarray:
        """Uniform random architecture (independent uniform choice per decision)."""
        return np.array([rng.integers(n) for n in self.num_choices], dtype=np.int64)

    def choice(self, choices: Sequence[int], name: str):
        return self.decisions[self.index[name]].choices[int(choices[self.index[name]])]

    def encode(self, choices: Sequence[int]) -> str:
        """Stable text key of an architecture (CSV latency files are keyed by it)."""
        return "-".join(str(int(c)) for c in self.check(choices))

    def parse(self, key: str) -> np.ndarray:
        try:
            values = [int(v) for v in key.strip().split("-")]
        except ValueError:
            raise ValueError(f"architecture key {key!r} is not '-'-separated integers") from None
        return self.check(values)

    def canonical(self, choices: Sequence[int]) -> np.ndarray:
        """Zero the choices of absent blocks, so equal networks get equal keys."""
        arr = self.check(choices).copy()
        for s in range(len(self.stages)):
            n = self.choice(arr, f"stage{s}/num_blocks")
            for b in range(n, max(NUM_BLOCKS)):
                for field in ("expansion", "kernel", "type"):
                    arr[self.index[f"stage{s}/block{b}/{field}"]] = 0
        return arr

    def choice_representatives(self) -> np.ndarray:
        """[D, max choices] int: for each decision and choice, the lowest choice of that
        decision that decodes to the same network whatever the other decisions are (padding:
        0). Why: filter ratios that round to the same channel count are one network under
        several encodings (stage 0: ratios 0.5-1.25 are all 32 channels), and a cost model
        indexed by the raw choice would price them differently (the Ethos-U85's by up to
        14%); `search.cost_model` reads every choice through this table."""
        sizes = self.num_choices
        table = np.zeros((len(sizes), max(sizes)), np.int64)
        for d, n in enumerate(sizes):
            table[d, :n] = np.arange(n)
        for s in range(len(self.stages)):
            d = self.index[f"stage{s}/filter_ratio"]
            filters = [self.stage_filters(s, r) for r in range(sizes[d])]
            table[d, :sizes[d]] = [filters.index(f) for f in filters]
        return table

    # -- decoding ----------------------------------------------------------------------------
    def active_blocks(self, choices: Sequence[int]) -> list[ActiveBlock]:
        arr = self.check(choices)
        blocks = []
        in_filters, in_ratio = self.stem_filters, -1
        for s, stage in enumerate(self.stages):
            ratio = int(arr[self.index[f"stage{s}/filter_ratio"]])
            filters = self.stage_filters(s, ratio)
            for b in range(self.choice(arr, f"stage{s}/num_blocks")):
                stride = stage.block_stride(b)
                expansion = self.choice(arr, f"stage{s}/block{b}/expansion")
                kind, group_size = self.block_kind(self.choice(arr, f"stage{s}/block{b}/type"),
                                                   in_filters, expansion, stride)
                blocks.append(ActiveBlock(
                    stage=s, index=b, in_filters=in_filters, filters=filters,
                    in_ratio=in_ratio, out_ratio=ratio, expansion=expansion,
                    kernel=self.choice(arr, f"stage{s}/block{b}/kernel"), kind=kind,
                    stride=stride, group_size=group_size))
                in_filters, in_ratio = filters, ratio
        return blocks

    def block_kind(self, block_type: str, in_filters: int, expansion: int,
                   stride: int) -> tuple[str, int | None]:
        """(spec kind, group_size) of a block of type choice `block_type`."""
        del in_filters  # the grouped spaces' group sizes depend on it
        if block_type == "fused_ibn" and expansion == 1 and stride != 1:
            # A fused block of expansion 1 has no KxK conv to carry the stride: its strided
            # form is the depthwise-separable one.
            return "ibn", None
        return block_type, None

    def type_index(self, layer: LayerSpec, in_filters: int) -> int | None:
        """The type choice that decodes to `layer` (kind, group size), or None."""
        del in_filters
        if layer.group_size is not None or layer.kind not in self.block_types:
            return None
        return self.block_types.index(layer.kind)

    def decode(self, choices: Sequence[int], name: str = "searched",
               description: str = "") -> ModelSpec:
        """Choice vector -> the same `ModelSpec` the zoo's models use."""
        blocks = tuple(
            LayerSpec(kind=a.kind, filters=a.filters, kernel=a.kernel, stride=a.stride,
                      expansion=float(a.expansion) if a.expansion != int(a.expansion)
                      else a.expansion, activation="relu", group_size=a.group_size)
            for a in self.active_blocks(choices))
        spec = ModelSpec(
            name=name,
            description=description or f"An architecture of the {self.name} search space.",
            stem=LayerSpec(kind="conv", filters=self.stem_filters, kernel=3, stride=2),
            blocks=blocks,
            head=(LayerSpec(kind="conv", filters=self.head_filters, kernel=1),),
            top=(LayerSpec(kind="conv", filters=self.top_filters, kernel=1, shrink=False),),
        )
        spec.validate()
        return spec

    def choices_for(self, spec: ModelSpec) -> np.ndarray:
        """Inverse of `decode` for a spec inside the space (e.g. Multi-MAX); else ValueError.

        Stage boundaries are found by backtracking: a stride-1 stage whose filters equal the
        previous stage's (e.g. 192 = 1.5 x 128 = 1.25 x 160) continues it block for block, so
        the greedy split can be wrong. Where several splits decode to the spec (the same
        network), the one with the longest earlier stages is returned.
        """
        blocks = list(spec.blocks)

        def fits(i: int) -> bool:
            layer = blocks[i]
            cin = blocks[i - 1].filters if i else self.stem_filters
            return (layer.expansion in EXPANSIONS and layer.kernel in KERNELS and
                    not layer.se_ratio and layer.activation == "relu" and
                    self.type_index(layer, cin) is not None)

        def split(s: int, start: int) -> list[int] | None:
            """Blocks per stage for stages s.. covering blocks[start:], or None."""
            if s == len(self.stages):
                return [] if start == len(blocks) else None
            stage = self.stages[s]
            if start >= len(blocks) or blocks[start].stride != stage.stride:
                return None
            filters = blocks[start].filters
            if not any(self.stage_filters(s, r) == filters for r in range(len(FILTER_RATIOS))):
                return None
            n_max = 0
            while (n_max < max(NUM_BLOCKS) and start + n_max < len(blocks) and
                   fits(start + n_max) and blocks[start + n_max].filters == filters and
                   blocks[start + n_max].stride == stage.block_stride(n_max)):
                n_max += 1
            for n in range(n_max, 0, -1):
                rest = split(s + 1, start + n)
                if rest is not None:
                    return [n] + rest
            return None

        counts = split(0, 0)
        if counts is None:
            raise ValueError(f"{spec.name} is not a point of the {self.name} space (its blocks "
                             "do not split into the stages' strides, filters and choices)")
        arr = np.zeros(len(self.decisions), dtype=np.int64)
        start = 0
        for s, n in enumerate(counts):
            group = blocks[start:start + n]
            start += n
            arr[self.index[f"stage{s}/num_blocks"]] = NUM_BLOCKS.index(n)
            arr[self.index[f"stage{s}/filter_ratio"]] = next(
                r for r in range(len(FILTER_RATIOS))
                if self.stage_filters(s, r) == group[0].filters)
            for b, layer in enumerate(group):
                cin = blocks[start - n + b - 1].filters if start - n + b else self.stem_filters
                arr[self.index[f"stage{s}/block{b}/expansion"]] = EXPANSIONS.index(layer.expansion)
                arr[self.index[f"stage{s}/block{b}/kernel"]] = KERNELS.index(layer.kernel)
                arr[self.index[f"stage{s}/block{b}/type"]] = self.type_index(layer, cin)
        if self.decode(arr, spec.name).blocks != spec.blocks:
            raise ValueError(f"{spec.name} is not a point of the {self.name} space")
        return arr


# -- the grouped space (issue #20) ------------------------------------------------------------

# Nominal group sizes (output channels per group of the grouped KxK conv), the Model Garden's
# `group_base_size` values: 64 its default (MobileNet-EdgeTPU-V2), 32 a finer step toward
# depthwise.
GROUP_SIZES = (32, 64)
GROUPED_BLOCK_TYPES = BLOCK_TYPES + tuple(
    f"{kind}_g{g}" for kind in ("ibn", "fused_ibn") for g in GROUP_SIZES)


def grouped_type(block_type: str) -> tuple[str, int | None]:
    """'ibn_g32' -> ('ibn', 32); 'fused_ibn' -> ('fused_ibn', None)."""
    kind, sep, size = block_type.rpartition("_g")
    return (kind, int(size)) if sep and size.isdigit() else (block_type, None)


def group_size_for(kind: str, in_filters: int, expansion: int, nominal: int) -> int:
    """The group size a grouped block of nominal size `nominal` gets, valid at every choice.

    The Model Garden's rule (groups = expanded channels / group size) wherever it splits the
    conv's channels evenly; else the nearest split that does, so that every choice of the
    space builds (the spec's rule: `mhmodels.spec.group_count`):
      * ibn (grouped KxK on the expanded channels, in = out): gcd(nominal, expanded); the
        channels are multiples of 32, so a size of 32 or 64, and every group lies inside one
        aligned block of 64 channels (the supernet stores one [K, K, 64, C] kernel for them).
      * fused_ibn (grouped KxK from the block's input to the expanded channels): the group
        count must also divide the input channels; the divisor of them nearest expanded /
        nominal (ties: more groups, i.e. the smaller group) - e.g. 32 -> 96 channels at size
        32 take 4 groups (size 24) instead of 3, which would split 32 inputs unevenly.
    """
    hidden = round8(expansion * in_filters)
    if kind == "ibn":
        return math.gcd(nominal, hidden)
    target = hidden / nominal
    groups = min((d for d in range(1, in_filters + 1) if in_filters % d == 0),
                 key=lambda d: (abs(d - target), -d))
    return hidden // groups


class GroupedSearchSpace(SearchSpace):
    """`multi_hw` with grouped blocks: each block's type is regular / fused (the paper's) or
    grouped / fused-grouped (the Edge TPU NAS paper's `ibn_grouped` / `ibn_fused_grouped`)
    at a nominal group size of `GROUP_SIZES` - one decision of 6 choices, the paper's two
    first, so a `multi_hw` choice vector is one of this space too (same decisions, order and
    sizes except the type's). Decodes to the spec's `group_size` (see `group_size_for`)."""

    block_types = GROUPED_BLOCK_TYPES

    def __init__(self, *args, name: str = "multi_hw_grouped", **kwargs):
        super().__init__(*args, name=name, **kwargs)

    def block_kind(self, block_type: str, in_filters: int, expansion: int,
                   stride: int) -> tuple[str, int | None]:
        kind, nominal = grouped_type(block_type)
        if nominal is None or (kind == "fused_ibn" and expansion == 1):
            # A fused block of expansion 1 has no KxK conv to group: it is the fused one.
            return super().block_kind(kind, in_filters, expansion, stride)
        return kind, group_size_for(kind, in_filters, expansion, nominal)

    def type_index(self, layer: LayerSpec, in_filters: int) -> int | None:
        if layer.group_size is None:
            return super().type_index(layer, in_filters)
        for i, block_type in enumerate(self.block_types):
            kind, nominal = grouped_type(block_type)
            if nominal is not None and kind == layer.kind and layer.expansion in EXPANSIONS \
                    and group_size_for(kind, in_filters, int(layer.expansion),
                                       nominal) == layer.group_size:
                return i
        return None


SPACES = {"multi_hw": SearchSpace, "multi_hw_grouped": GroupedSearchSpace}


def get_space(name: str = "multi_hw"):
    """A registered space (`SPACES`), a shipped reduced space by short name
    (``multi_hw@ethos_u55``: ``search/spaces/<name>.json``) or a reduced-space file by path."""
    if name in SPACES:
        return SPACES[name]()
    path = Path(os.path.expanduser(str(name)))
    if str(name).endswith(".json") or os.sep in str(name):
        if not path.is_file():
            raise ValueError(f"no space file {name}")
        return load_space_file(path)
    shipped = SHIPPED_SPACES_DIR / f"{name}.json"
    if shipped.is_file():
        return load_space_file(shipped)
    raise ValueError(f"unknown search space {name!r}; known: {', '.join(known_spaces())}, "
                     "or the path of a space file (.json)")


# --------------------------------------------------------------------------------------------
# Reduced spaces: a mask over a base space's choices (docs/block_profiles.md)

SPACE_FORMAT = "mhmodels-space/1"
SHIPPED_SPACES_DIR = Path(__file__).resolve().parent / "spaces"  # read, never written
_BLOCK_DECISION = re.compile(r"^stage(\d+)/block(\d+)/(\w+)$")
_STAGE_DECISION = re.compile(r"^stage(\d+)/(\w+)$")


def known_spaces() -> list[str]:
    """Registered names, then the shipped reduced spaces' short names."""
    shipped = sorted(p.stem for p in SHIPPED_SPACES_DIR.glob("*.json")) \
        if SHIPPED_SPACES_DIR.is_dir() else []
    return list(SPACES) + shipped


def mask_keys(decision: str) -> list[str]:
    """The keys of a space file's ``allowed`` that may restrict `decision`, most specific
    first: ``stage1/block2/kernel``, ``stage1/kernel`` (every block of the stage), ``kernel``."""
    m = _BLOCK_DECISION.match(decision)
    if m:
        return [decision, f"stage{m.group(1)}/{m.group(3)}", m.group(3)]
    m = _STAGE_DECISION.match(decision)
    return [decision, m.group(2)] if m else [decision]


def resolve_mask(base, allowed: Mapping[str, Sequence]) -> tuple[tuple[bool, ...], ...]:
    """Per decision of `base`, which choice indices `allowed` ({key: values}) keeps; a key
    that restricts nothing, a value the decision does not have, or a decision left with no
    choice is a ValueError."""
    used: set[str] = set()
    mask = []
    for d in base.decisions:
        key = next((k for k in mask_keys(d.name) if k in allowed), None)
        if key is None:
            mask.append((True,) * d.size)
            continue
        used.add(key)
        values = list(allowed[key])
        bad = [v for v in values if v not in d.choices]
        if bad:
            raise ValueError(f"allowed[{key!r}]: {bad} not among {d.name}'s choices "
                             f"{list(d.choices)}")
        row = tuple(c in values for c in d.choices)
        if not any(row):
            raise ValueError(f"allowed[{key!r}] leaves {d.name} no choice")
        mask.append(row)
    unused = sorted(set(allowed) - used)
    if unused:
        raise ValueError(f"allowed keys {unused} match no decision of space {base.name!r}")
    return tuple(mask)


def choice_mask(space) -> np.ndarray:
    """``[D, max choices]`` bool: the choices the controller may sample (padding: False)."""
    sizes = space.num_choices
    out = np.zeros((len(sizes), max(sizes)), bool)
    rows = getattr(space, "mask", None) or [(True,) * n for n in sizes]
    for i, row in enumerate(rows):
        out[i, :len(row)] = row
    return out


def base_space(space):
    """The space whose decisions, supernet and cost models `space` uses (itself unless
    reduced)."""
    return getattr(space, "base", space)


def space_digest(space) -> str | None:
    """A reduced space's identity (base and mask), None for a registered space: a resumed
    search compares it, so an edited space file is not resumed as the old one."""
    if space is base_space(space):
        return None
    text = json.dumps([base_space(space).name, [list(r) for r in space.mask]])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class ReducedSpace:
    """A base space with some choices masked out: same decisions and choice indices (so the
    supernet and the base space's cost models apply unchanged), but `sample` and the
    controller never pick a masked choice and `check` refuses one.

    Only choices that shape the network count: those of absent blocks (beyond a stage's
    ``num_blocks``) are ignored, as `canonical` zeroes them. Everything else (stages,
    decisions, ``stage_filters`` ...) is the base space's.
    """

    def __init__(self, base, allowed: Mapping[str, Sequence], name: str,
                 rule: Mapping | None = None, source: str | None = None,
                 description: str = ""):
        if base_space(base) is not base:
            raise ValueError(f"the base of a reduced space must be a registered space, not "
                             f"{base.name!r}")
        self.base = base
        self.name = name
        self.allowed = {k: list(v) for k, v in allowed.items()}
        self.mask = resolve_mask(base, self.allowed)
        self.rule = dict(rule or {})
        self.source = source
        self.description = description

    def __getattr__(self, attr):  # the base's stages, decisions, index, decoding helpers
        if attr == "base":
            raise AttributeError(attr)
        return getattr(self.base, attr)

    def size(self) -> float:
        return float(np.prod([float(sum(row)) for row in self.mask]))

    def _present(self, arr: np.ndarray, decision: str) -> bool:
        m = _BLOCK_DECISION.match(decision)
        if not m:
            return True
        key = f"stage{m.group(1)}/num_blocks"
        return key not in self.base.index or int(m.group(2)) < self.base.choice(arr, key)

    def check(self, choices: Sequence[int]) -> np.ndarray:
        arr = self.base.check(choices)
        for i, d in enumerate(self.base.decisions):
            if not self.mask[i][arr[i]] and self._present(arr, d.name):
                allowed = [c for c, ok in zip(d.choices, self.mask[i]) if ok]
                raise ValueError(f"{d.name}={d.choices[arr[i]]!r} is outside space "
                                 f"{self.name!r} (allowed: {allowed})")
        return arr

    def sample(self, rng: np.random.Generator) -> np.ndarray:
        """Uniform over the allowed choices of every decision."""
        return np.array([int(np.flatnonzero(row)[rng.integers(sum(row))]) for row in self.mask],
                        dtype=np.int64)

    def parse(self, key: str) -> np.ndarray:
        return self.check(self.base.parse(key))

    def encode(self, choices: Sequence[int]) -> str:
        return self.base.encode(self.check(choices))

    def canonical(self, choices: Sequence[int]) -> np.ndarray:
        return self.base.canonical(self.check(choices))

    def active_blocks(self, choices: Sequence[int]) -> list:
        return self.base.active_blocks(self.check(choices))

    def decode(self, choices: Sequence[int], name: str = "searched", description: str = ""):
        return self.base.decode(self.check(choices), name,
                                description or f"An architecture of the {self.name} space.")

    def choices_for(self, spec: ModelSpec) -> np.ndarray:
        return self.check(self.base.choices_for(spec))

    def record(self) -> dict:
        """The space file's content (what `load_space_file` reads back)."""
        return {"format": SPACE_FORMAT, "name": self.name, "base": self.base.name,
                "description": self.description, "allowed": self.allowed, "rule": self.rule}


def load_space_file(path: str | os.PathLike) -> ReducedSpace:
    """A reduced space from its JSON file (`ReducedSpace.record`); one ValueError naming the
    file for anything wrong in it."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
        if data.get("format") != SPACE_FORMAT:
            raise ValueError(f"format {data.get('format')!r} is not {SPACE_FORMAT!r}")
        if data.get("base") not in SPACES:
            raise ValueError(f"base {data.get('base')!r} is not a registered space "
                             f"({', '.join(SPACES)})")
        name = data.get("name") or path.stem
        return ReducedSpace(SPACES[data["base"]](), data.get("allowed") or {}, name,
                            rule=data.get("rule"), source=str(path),
                            description=data.get("description", ""))
    except (OSError, ValueError, TypeError, AttributeError) as err:
        raise ValueError(f"space file {path}: {err}") from None


def write_space_file(space: ReducedSpace, path: str | os.PathLike) -> None:
    """Write `space` as a space file (atomically)."""
    from mhmodels.files import atomic_write
    atomic_write(path, json.dumps(space.record(), indent=1) + "\n")
