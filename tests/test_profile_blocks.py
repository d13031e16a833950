"""Block profiling: the estimators recover known per-choice costs; the small mode runs end to
end on vela estimates of written files (well under a minute)."""
import csv

import numpy as np
import pytest

from search import profile_blocks as pb
from search.space import (BLOCK_TYPES, EXPANSIONS, FILTER_RATIOS, KERNELS, NUM_BLOCKS,
                          get_space)

SPACE = get_space()


def uniform_choices(rng, n: int) -> np.ndarray:
    """`n` architectures as SearchSpace.sample draws them (independent uniform decisions)."""
    return rng.integers(0, SPACE.num_choices, (n, len(SPACE.num_choices)))


def synthetic(n: int, seed: int = 0):
    """Uniform architectures and an additive cost with known per-choice costs (ms): each
    present block costs expansion + kernel + type terms of its stage, each stage a width
    term; plus measurement noise."""
    rng = np.random.default_rng(seed)
    stages = len(SPACE.stages)
    cost = {f: rng.uniform(0.0, 2.0, (stages, len(v))) for f, v in pb.FIELDS.items()}
    width = rng.uniform(0.0, 3.0, (stages, len(FILTER_RATIOS)))
    choices = uniform_choices(rng, n)
    col = SPACE.index
    y = 5.0 + rng.normal(0, 0.2, n)
    for s in range(stages):
        depth = np.asarray(NUM_BLOCKS)[choices[:, col[f"stage{s}/num_blocks"]]]
        y += width[s, choices[:, col[f"stage{s}/filter_ratio"]]]
        for b in range(max(NUM_BLOCKS)):
            for f in pb.FIELDS:
                y += (depth > b) * cost[f][s, choices[:, col[f"stage{s}/block{b}/{f}"]]]
    return choices, y, cost, width


@pytest.fixture(scope="module")
def recovered():
    choices, y, cost, width = synthetic(200000)
    return pb.block_effects(SPACE, choices, y, "synthetic"), cost, width


def test_choice_effects_recovered_within_5_percent(recovered):
    effects, cost, _ = recovered
    for s in range(len(SPACE.stages)):
        for f, options in pb.FIELDS.items():
            truth = cost[f][s] - cost[f][s].mean()
            got = pb.pooled(effects, f, s)
            estimate = np.array([got[str(v)][0] for v in options])
            spread = truth.max() - truth.min()
            assert np.abs(estimate - truth).max() <= 0.05 * spread, (s, f, estimate, truth)


def test_depth_and_width_effects_recovered_within_5_percent(recovered):
    effects, cost, width = recovered
    for s in range(len(SPACE.stages)):
        block_cost = sum(cost[f][s].mean() for f in pb.FIELDS)  # any added block, on average
        for n, (value, half) in pb.depth_sensitivity(effects, s).items():
            assert abs(value - block_cost) <= 0.05 * block_cost, (s, n, value, block_cost)
            assert half > 0
        truth = width[s] - width[s].mean()
        got = {e.choice: e.placement for e in effects if e.factor == "width" and e.stage == s}
        estimate = np.array([got[str(r)] for r in FILTER_RATIOS])
        assert np.abs(estimate - truth).max() <= 0.05 * (truth.max() - truth.min()), \
            (s, estimate, truth)


def test_intervals_cover_the_truth(recovered):
    """95% intervals of the per-position choice effects contain the true value ~95% of the
    time (at least 85% here)."""
    effects, cost, _ = recovered
    hits = []
    for e in effects:
        if e.factor in pb.FIELDS and e.block >= 0:
            options = [str(v) for v in pb.FIELDS[e.factor]]
            truth = cost[e.factor][e.stage][options.index(e.choice)] - cost[e.factor][e.stage].mean()
            hits.append(e.choice_lo <= truth <= e.choice_hi)
    assert len(hits) == len(SPACE.stages) * max(NUM_BLOCKS) * \
        (len(EXPANSIONS) + len(KERNELS) + len(BLOCK_TYPES))
    assert np.mean(hits) >= 0.85, np.mean(hits)


def test_percentile_shift_of_a_known_distribution():
    """Eq. 3 on a case with a known answer: one stage's kernel 5 adds exactly 1 ms to
    every architecture that has it in block 0, so the 5th / 95th percentiles of that subset
    move by ~ +1 ms against the kernel-3 subset."""
    rng = np.random.default_rng(3)
    choices = uniform_choices(rng, 20000)
    kernel5 = choices[:, SPACE.index["stage2/block0/kernel"]] == KERNELS.index(5)
    y = rng.normal(10.0, 1.0, len(choices)) + kernel5
    rows = {e.choice: e for e in pb.block_effects(SPACE, choices, y)
            if e.factor == "kernel" and e.stage == 2 and e.block == 0}
    for q in ("p5", "p95"):
        shift = getattr(rows["5"], f"{q}_shift") - getattr(rows["3"], f"{q}_shift")
        assert abs(shift - 1.0) < 0.1, (q, shift)
        assert getattr(rows["5"], f"{q}_lo") < getattr(rows["5"], f"{q}_shift") < \
            getattr(rows["5"], f"{q}_hi")


def test_cross_check_counts_signs_and_ranks():
    measured = {"a": (1.0, 0.1), "b": (-2.0, 0.1), "c": (0.05, 0.1), "d": (0.5, 0.1)}
    predicted = {"a": (0.8, 0.0), "b": (-1.0, 0.0), "c": (-0.3, 0.0), "d": (-0.2, 0.0)}
    check = pb.cross_check(measured, predicted)
    assert check["clear"] == 3 and check["sign_agreement"] == pytest.approx(2 / 3)
    assert [k for k, _, _ in check["disagreements"]] == ["d"]


@pytest.mark.slow  # over 20 s on 2 idle cores (CI durations)
def test_small_mode_end_to_end(tmp_path):
    """`python -m search.profile_blocks`'s small mode: 16 architectures at 32x32 priced by
    vela on the Ethos-U55 from written files, every output written and sensible. (vela's
    time goes with the weights, not the image: ~1 s per large architecture at any size.)"""
    effects = pb.profile(["ethos_u55"], 16, tmp_path, image_size=32, seed=1)["ethos_u55"]
    with open(tmp_path / "latency.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["arch"] != "mobilenet_v1"]
    assert len(rows) == 16 and all(float(r["ethos_u55_ms"]) > 0 for r in rows)
    expansion = pb.pooled(effects, "expansion")
    # Wider hidden layers cost the NPU time: expansion 6 blocks are slower than expansion 1.
    assert expansion["6"][0] > expansion["1"][0]
    with open(tmp_path / "effects.csv", newline="") as f:
        assert len(list(csv.DictReader(f))) == len(effects) > 100
    text = (tmp_path / "report.md").read_text()
    assert "| ethos_u55 |" in text and "sign agreement" in text
    from PIL import Image
    for name in ("heatmaps.png", "heatmaps_ethos_u55.png"):
        width, height = Image.open(tmp_path / name).size
        assert width > 300 and height > 300
