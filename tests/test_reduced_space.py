"""Hardware-specific reduced search spaces: the space file round-trips, a choice outside the
space is one clear error, the controller and a real (tiny) search never use a masked choice, a
resumed search refuses another space, the derivation drops exactly the dominated choices of a
synthetic additive cost, and the shipped spaces load by short name."""
import json
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from search import reduce_space as rs  # noqa: E402
from search import space as space_lib  # noqa: E402
from search.space import (NUM_BLOCKS, ReducedSpace, choice_mask, get_space,  # noqa: E402
                          load_space_file, space_digest, write_space_file)

ALLOWED = {"type": ["ibn"], "stage4/kernel": [3], "stage1/expansion": [3, 4, 6],
           "stage2/num_blocks": [1, 2], "stage0/block1/kernel": [5]}


def reduced(allowed=None, name="multi_hw@test"):
    return ReducedSpace(get_space(), ALLOWED if allowed is None else allowed, name,
                        rule={"hardware": ["test"], "date": "2026-01-01"})


def test_space_file_round_trips(tmp_path):
    space = reduced()
    path = tmp_path / "s.json"
    write_space_file(space, path)
    back = get_space(str(path))
    assert back.mask == space.mask and space_digest(back) == space_digest(space)
    assert back.name == "multi_hw@test" and back.record() == space.record()
    assert back.source == str(path) and back.base.name == "multi_hw"
    # readable: choices by value, and exactly what was asked for is masked
    data = json.loads(path.read_text())
    assert data["allowed"]["stage1/expansion"] == [3, 4, 6] and data["base"] == "multi_hw"
    mask = choice_mask(back)
    ix = back.index
    assert mask[ix["stage1/block2/expansion"], :6].tolist() == [False, False, True, True,
                                                                False, True]
    assert mask[ix["stage0/block1/kernel"], :2].tolist() == [False, True]
    assert mask[ix["stage0/block0/kernel"], :2].tolist() == [True, True]
    assert mask[ix["stage2/num_blocks"], :4].tolist() == [True, True, False, False]
    assert not mask[[ix[f"stage{s}/block{b}/type"] for s in range(5) for b in range(4)], 1].any()
    # the full space: no digest, everything allowed (padding aside)
    full = get_space()
    assert space_digest(full) is None
    assert choice_mask(full).sum() == sum(full.num_choices)
    assert back.size() == pytest.approx(full.size() * 0.5 ** 20 * 0.5 ** 4 * 0.5 ** 4 * 0.5
                                        * 0.5)


@pytest.mark.parametrize("allowed, message", [
    ({"kernel": [7]}, r"\[7\] not among stage0/block0/kernel"),
    ({"kernel": []}, "leaves stage0/block0/kernel no choice"),
    ({"stage9/kernel": [3]}, "match no decision"),
    ({"colour": ["red"]}, "match no decision"),
])
def test_a_bad_space_file_is_one_error_naming_it(tmp_path, allowed, message):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({"format": space_lib.SPACE_FORMAT, "name": "bad",
                                "base": "multi_hw", "allowed": allowed}))
    with pytest.raises(ValueError, match=message) as err:
        get_space(str(path))
    assert str(path) in str(err.value)
    path.write_text(json.dumps({"format": space_lib.SPACE_FORMAT, "base": "nope"}))
    with pytest.raises(ValueError, match="not a registered space"):
        get_space(str(path))
    with pytest.raises(ValueError, match="unknown search space 'multi_hw@nowhere'"):
        get_space("multi_hw@nowhere")
    with pytest.raises(ValueError, match="no space file"):
        get_space(str(tmp_path / "missing.json"))


def test_a_choice_outside_the_space_is_one_clear_error():
    space, full = reduced(), get_space()
    rng = np.random.default_rng(0)
    samples = np.stack([space.sample(rng) for _ in range(3000)])
    mask = choice_mask(space)
    assert mask[np.arange(samples.shape[1]), samples].all()  # sampling never leaves the space
    for c in samples[:50]:
        assert space.decode(c).blocks == full.decode(c).blocks  # decoding is the base's
    choices = space.sample(rng)
    choices[space.index["stage4/num_blocks"]] = 0  # one block in stage 4
    choices[space.index["stage4/block0/kernel"]] = 1  # kernel 5: masked
    with pytest.raises(ValueError, match=r"stage4/block0/kernel=5 is outside space "
                                         r"'multi_hw@test' \(allowed: \[3\]\)"):
        space.decode(choices)
    with pytest.raises(ValueError, match="outside space"):
        space.parse(full.encode(choices))
    choices[space.index["stage4/block0/kernel"]] = 0
    choices[space.index["stage4/block3/kernel"]] = 1  # an absent block: shapes nothing
    assert space.encode(space.canonical(choices)) == full.encode(full.canonical(choices))
    # a zoo entry outside the space (Multi-MAX has kernel-5 blocks in stage 4)
    import mhmodels
    with pytest.raises(ValueError, match="outside space"):
        space.choices_for(mhmodels.get_spec("multi_max"))
    assert (reduced({}).choices_for(mhmodels.get_spec("multi_max"))
            == full.choices_for(mhmodels.get_spec("multi_max"))).all()


def test_controller_never_samples_or_picks_a_masked_choice():
    import tensorflow as tf
    from search.controller import Controller
    space = reduced()
    mask = choice_mask(space)
    ctrl = Controller(space.num_choices, allowed=mask)
    # every allowed logit pushed below the masked ones: the argmax still never leaves the space
    for v, row in zip(ctrl.logits, mask):
        v.assign(np.where(row[:v.shape[0]], -5.0, 5.0).astype(np.float32))
    assert mask[np.arange(len(mask)), ctrl.argmax()].all()
    for i in range(30):
        c = ctrl.sample(tf.constant([3, i], tf.int64)).numpy()
        assert mask[np.arange(len(mask)), c].all()
    free = Controller(space.num_choices)
    for v, row in zip(free.logits, mask):
        v.assign(np.where(row[:v.shape[0]], -5.0, 5.0).astype(np.float32))
    assert not mask[np.arange(len(mask)), free.argmax()].all()  # the test can fail


@pytest.mark.slow  # two tiny searches: ~35 s on a quiet 2-core host
def test_tiny_search_never_uses_a_masked_choice_and_resume_refuses_another_space(tmp_path):
    from test_search_loop import StandInCostModel, tiny_config, tiny_space
    from search.loop import run_search
    base = tiny_space()
    space = ReducedSpace(base, {"kernel": [3], "expansion": [2, 6], "stage0/num_blocks": [3, 4]},
                         "tiny@test")
    cms = [StandInCostModel(base, "hw_a", 1), StandInCostModel(base, "hw_b", 2, 0.5)]
    seen = []
    result = run_search(tiny_config(tmp_path / "run", steps=8, max_steps=6), cost_models=cms,
                        space=space, write_entry=False,
                        on_step=lambda step, v: seen.append(np.asarray(v["choices"])))
    mask = choice_mask(space)
    sampled = np.concatenate([s.reshape(-1, len(mask)) for s in seen])
    assert len(sampled) == 6
    assert mask[np.arange(len(mask)), sampled].all()
    assert mask[np.arange(len(mask)), result.choices].all()
    assert space.check(result.choices) is not None
    saved = json.loads((tmp_path / "run" / "search_config.json").read_text())
    assert saved["space"] == "tiny@test" and saved["space_digest"] == space_digest(space)
    other = ReducedSpace(base, {"kernel": [5]}, "tiny@test")  # same name, another mask
    with pytest.raises(ValueError, match="different settings.*space_digest"):
        run_search(tiny_config(tmp_path / "run", steps=8), cost_models=cms, space=other,
                   write_entry=False)
    done = run_search(tiny_config(tmp_path / "run", steps=8), cost_models=cms, space=space,
                      write_entry=False)  # the same space resumes
    assert done.finished and mask[np.arange(len(mask)), done.choices].all()


def test_reduced_space_uses_the_base_space_cost_model(tmp_path):
    from search.config import SearchConfig, check_cost_models
    from search.cost_model import load_cost_model
    space = reduced()
    path = tmp_path / "s.json"
    write_space_file(space, path)
    rng = np.random.default_rng(1)
    batch = np.stack([space.sample(rng) for _ in range(20)])
    for hw in ("cpu_int8", "ethos_u55"):
        mine = load_cost_model(hw, space=get_space(str(path)))
        assert mine.space_name == "multi_hw"
        assert np.allclose(mine.predict(batch), load_cost_model(hw).predict(batch))
    models = check_cost_models(SearchConfig(model_dir=str(tmp_path / "m"), space=str(path),
                                            hardware=("ethos_u55",)))
    assert len(models) == 1


# -- the derivation -------------------------------------------------------------------------

def synthetic_profile(n: int, dominated_on: str = "a", seed: int = 0):
    """Uniform architectures and additive costs with known dominance on hardware "a": stage 4
    fused blocks 2 ms over regular ones, stage 1 expansion 5 slower than expansion 6, stage 2
    kernel 3 slower than kernel 5, stage 3's 4th block 40% of the mean latency; everything
    else costs more the larger it is (nothing else dominated). Hardware "b" has the same
    costs without the stage-4 fused penalty."""
    space = get_space()
    rng = np.random.default_rng(seed)
    choices = np.stack([space.sample(rng) for _ in range(n)])
    ix = space.index
    costs = {"expansion": np.array([0.2, 0.4, 0.6, 0.8, 1.0, 1.2]), "kernel": np.array([0.2, 0.5]),
             "type": np.array([0.3, 0.3])}
    y = {"a": 5.0 + rng.normal(0, 0.1, n), "b": 5.0 + rng.normal(0, 0.1, n)}
    for s in range(5):
        depth = np.asarray(NUM_BLOCKS)[choices[:, ix[f"stage{s}/num_blocks"]]]
        for b in range(4):
            present = depth > b
            for field, table in costs.items():
                table = table.copy()
                if s == 1 and field == "expansion":
                    table[4] = 3.0  # e5 slower than e6
                if s == 2 and field == "kernel":
                    table = np.array([3.0, 0.5])  # k3 slower than k5
                c = choices[:, ix[f"stage{s}/block{b}/{field}"]]
                for hw in y:
                    t = table.copy()
                    if s == 4 and field == "type" and hw == dominated_on:
                        t = np.array([0.3, 2.3])  # fused: +2 ms
                    y[hw] += present * t[c]
            if s == 3 and b == 3:
                for hw in y:
                    y[hw] += present * 12.0
    return space, choices, y


def test_derivation_drops_exactly_the_dominated_choices():
    space, choices, y = synthetic_profile(6000)
    assert 12.0 > 0.1 * y["a"].mean() * 1.5  # the stage-3 step is clearly disproportionate
    out = rs.derive(space, choices, {"a": y["a"]}, "multi_hw@a", source="synthetic")
    dropped = {(d["stage"], d["decision"], d["choice"], d["dominated_by"])
               for d in out.rule["dropped"]}
    assert dropped == {(4, "type", "fused_ibn", "ibn"), (1, "expansion", 5, 6),
                       (2, "kernel", 3, 5)}
    assert out.rule["depth_caps"] == [{"stage": 3, "max_blocks": 3,
                                       "step_lower_bound_ms": out.rule["depth_caps"][0]
                                       ["step_lower_bound_ms"]}]
    assert out.allowed == {"stage1/expansion": [1, 2, 3, 4, 6], "stage2/kernel": [5],
                           "stage3/num_blocks": [1, 2, 3], "stage4/type": ["ibn"]}
    assert out.rule["hardware"] == ["a"] and out.rule["profile"] == "synthetic"
    # several hardware: dominance of the latency vector (the stage-4 penalty is a's only)
    both = rs.derive(space, choices, {"a": y["a"], "b": y["b"]}, "multi_hw@a+b")
    assert "stage4/type" not in both.allowed and "stage1/expansion" in both.allowed
    # too few networks: nothing is dropped (a placement without data confirms nothing)
    few = rs.derive(space, choices[:40], {"a": y["a"][:40]}, "multi_hw@few")
    assert few.allowed == {} or "stage4/type" not in few.allowed


def test_reduce_space_command_writes_a_loadable_file(tmp_path):
    space, choices, y = synthetic_profile(3000)
    csv_path = tmp_path / "latency.csv"
    lines = ["arch,image_size,a_ms,b_ms", "mobilenet_v1,224,1.0,1.0"]
    lines += [f"{space.encode(c)},224,{ya:.5f},{yb:.5f}" for c, ya, yb in zip(choices, y["a"],
                                                                              y["b"])]
    csv_path.write_text("\n".join(lines) + "\n")
    out = rs.write([csv_path], ["a"], tmp_path / "a.json")
    back = load_space_file(tmp_path / "a.json")
    assert back.mask == out.mask and back.allowed["stage4/type"] == ["ibn"]
    assert back.rule["architectures"] == 3000 and back.rule["image_size"] == 224
    assert "dominated by ibn" in rs.summary(back)


def test_shipped_spaces_load_by_short_name():
    shipped = sorted(space_lib.SHIPPED_SPACES_DIR.glob("*.json"))
    assert shipped, "no shipped reduced spaces"
    for path in shipped:
        space = get_space(path.stem)
        assert space.name == path.stem and space.base.name in space_lib.SPACES
        assert path.stem in space_lib.known_spaces()
        rule = space.rule
        assert rule["hardware"] and rule["architectures"] > 0 and rule["date"]
        assert path.stem == f"{space.base.name}@" + "+".join(rule["hardware"])


def test_experiment_space_flags():
    from search.experiment import ExperimentConfig, search_spaces, space_of_search, validate
    config = ExperimentConfig(output_dir="/tmp/unused", space="multi_hw",
                              space_for=("ethos_u55:multi_hw",))
    validate(config)
    assert space_of_search(config, ("ethos_u55",)) == "multi_hw"
    assert config.identity()["space_for"] == ["ethos_u55:multi_hw"]
    assert "space" not in ExperimentConfig(output_dir="/x").identity()  # older runs resume
    for bad, message in ((("u55",), "expected <hardware>:<space"),
                         (("ethos_u65:multi_hw",), "not one of --hardware"),
                         (("ethos_u55:nowhere",), "unknown search space")):
        with pytest.raises(ValueError, match=message):
            search_spaces(ExperimentConfig(output_dir="/x", space_for=bad))


def test_pareto_front_and_hypervolume():
    from search.compare_spaces import hypervolume, pareto_front
    points = [(1.0, 0.9), (0.5, 0.5), (0.8, 0.4), (1.5, 0.95), (2.5, 0.99)]
    assert pareto_front(points) == [(0.5, 0.5), (1.0, 0.9), (1.5, 0.95), (2.5, 0.99)]
    # (1.0-0.5)*0.5 + (1.5-1.0)*0.9 + (2.0-1.5)*0.95; the point beyond f_ref adds nothing
    assert hypervolume(points, 2.0) == pytest.approx(0.25 + 0.45 + 0.475)
    assert hypervolume([], 2.0) == 0.0


def test_compare_spaces_pairs_seeds_and_refuses_other_settings(tmp_path):
    from search.compare_spaces import compare
    header = "seed,group,label,width,top1,measured_f\n"
    runs = {}
    for name, rows in (("full", [(0, 0.8, 1.0), (1, 0.7, 1.0)]),
                       ("reduced", [(0, 0.9, 1.0), (1, 0.8, 0.5)])):
        d = tmp_path / name
        d.mkdir()
        (d / "experiment.json").write_text(json.dumps({"search_steps": 300, "space": name}))
        (d / "results.csv").write_text(header + "".join(
            f"{s},multi-hardware search,searched_max,1.0,{a},{f}\n" for s, a, f in rows)
            + "0,zoo baseline,multi_max,1.0,0.5,\n")
        runs[name] = d
    text, rows = compare(runs, f_ref=2.0)
    (row,) = rows
    assert row["full_hv"] == pytest.approx(0.8) and row["reduced_hv"] == pytest.approx(1.3)
    # per seed: (0.9 - 0.8) * 1.0 and 0.8 * 1.5 - 0.7 * 1.0
    assert row["hv_difference"] == pytest.approx((0.1 + 0.5) / 2) and row["seeds"] == 2
    assert "| searched_max | 2 / 1 / 0.8000 | 2 / 2 / 1.3000 |" in text
    (runs["reduced"] / "experiment.json").write_text(json.dumps({"search_steps": 600}))
    with pytest.raises(ValueError, match="differ in more than their space"):
        compare(runs)


def test_shipped_spaces_are_what_the_rule_derives_from_their_data():
    """Every shipped space is re-derived from the profile its rule names (docs/block_profiles/
    spaces_data/, in the checkout): the same mask. The U55's drops stage 3's fused blocks and
    caps stage 4 at two blocks (1,295 vela-priced networks); a fused stage-3 block is refused."""
    checked = 0
    for path in sorted(space_lib.SHIPPED_SPACES_DIR.glob("*.json")):
        shipped = get_space(path.stem)
        if "profile" not in shipped.rule:  # another rule (multi_hw_grouped@ethos_u85)
            continue
        sources = shipped.rule["profile"].split(",")
        choices, latencies, size = rs.read_profile([ROOT / p for p in sources],
                                                   shipped.rule["hardware"], shipped.base)
        assert len(choices) == shipped.rule["architectures"] and size == 224
        again = rs.derive(shipped.base, choices, latencies, path.stem,
                          min_samples=shipped.rule["min_samples"],
                          depth_share=shipped.rule["depth_share"])
        assert again.allowed == shipped.allowed, path.stem
        checked += 1
    assert checked >= 5
    u55 = get_space("multi_hw@ethos_u55")
    assert u55.allowed == {"stage3/type": ["ibn"], "stage4/num_blocks": [1, 2]}
    assert u55.rule["architectures"] == 1295 and u55.rule["size_fraction"] == 1 / 32
    base = u55.base
    arch = base.sample(np.random.default_rng(0))
    for b in range(4):
        arch[base.index[f"stage3/block{b}/type"]] = base.decisions[
            base.index[f"stage3/block{b}/type"]].choices.index("fused_ibn")
    arch[base.index["stage3/num_blocks"]] = base.decisions[
        base.index["stage3/num_blocks"]].choices.index(4)
    with pytest.raises(ValueError, match="stage3/block0/type='fused_ibn' is outside "
                                         "space 'multi_hw@ethos_u55'"):
        u55.check(arch)
