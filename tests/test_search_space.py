"""The multi-hardware search space: decisions, decoding, and its inverse `choices_for`."""
import dataclasses

import numpy as np
import pytest

import mhmodels
from search import space as space_lib


@pytest.fixture(scope="module")
def space():
    return space_lib.get_space("multi_hw")


def test_decisions_and_channel_multiples(space):
    # 5 stages x (num_blocks + filter_ratio + 4 blocks x (expansion, kernel, type))
    assert len(space.decisions) == 70
    assert space.num_choices == [d.size for d in space.decisions]
    for s in range(len(space.stages)):
        for r in range(len(space_lib.FILTER_RATIOS)):
            assert space.stage_filters(s, r) % 32 == 0


@pytest.mark.parametrize("name", ["multi_max", "multi_avg"])
def test_the_paper_models_are_points_of_the_space(space, name):
    spec = mhmodels.get_spec(name)
    choices = space.choices_for(spec)
    assert space.decode(choices, name).blocks == spec.blocks
    assert mhmodels.profile(space.decode(choices, name)).madds == mhmodels.profile(spec).madds


def test_choices_for_inverts_decode_on_random_architectures(space):
    rng = np.random.default_rng(0)
    for _ in range(500):
        spec = space.decode(space.sample(rng), "x")
        assert space.decode(space.choices_for(spec), "x").blocks == spec.blocks


def test_choices_for_a_stride1_stage_continuing_the_previous_stage(space):
    """Stage 2 at ratio 1.5 and stage 3 at ratio 1.25 both have 192 filters: the blocks of
    stage 3 look like more blocks of stage 2, and a greedy split leaves stage 3 empty."""
    c = space.sample(np.random.default_rng(1))
    for name, value in (("stage2/filter_ratio", 1.5), ("stage3/filter_ratio", 1.25),
                        ("stage2/num_blocks", 2), ("stage3/num_blocks", 1)):
        c[space.index[name]] = space.decisions[space.index[name]].choices.index(value)
    assert space.stage_filters(2, int(c[space.index["stage2/filter_ratio"]])) == 192
    assert space.stage_filters(3, int(c[space.index["stage3/filter_ratio"]])) == 192
    spec = space.decode(c, "x")
    assert space.decode(space.choices_for(spec), "x").blocks == spec.blocks


def test_models_outside_the_space_are_an_error(space):
    for name in ("mobilenet_v2", "mobilenet_v3_large"):
        with pytest.raises(ValueError, match="not a point of the multi_hw space"):
            space.choices_for(mhmodels.get_spec(name))


# -- the paper space is pinned; the grouped space (issue #20) ------------------------------------

def test_the_paper_space_is_unchanged(space):
    """Decisions, order, choices and decoding of multi_hw as shipped (its cost models and
    results depend on them): digests taken before the grouped space was added."""
    import hashlib
    text = ";".join(f"{d.name}={d.choices}" for d in space.decisions)
    assert hashlib.sha256(text.encode()).hexdigest()[:16] == "bd2ae20fa48fefe1"
    rng = np.random.default_rng(0)
    h = hashlib.sha256()
    for _ in range(200):
        c = space.sample(rng)
        h.update(space.decode(c, "x").to_json().encode())
        h.update(space.encode(space.canonical(c)).encode())
    for name in ("multi_max", "multi_avg"):
        h.update(str(space.choices_for(mhmodels.get_spec(name)).tolist()).encode())
    assert h.hexdigest()[:16] == "e5fadcac536fcd7f"


@pytest.fixture(scope="module")
def grouped():
    return space_lib.get_space("multi_hw_grouped")


def test_grouped_space_extends_only_the_block_types(space, grouped):
    assert [d.name for d in grouped.decisions] == [d.name for d in space.decisions]
    for d, g in zip(space.decisions, grouped.decisions):
        if d.name.endswith("/type"):
            assert g.choices == ("ibn", "fused_ibn", "ibn_g32", "ibn_g64", "fused_ibn_g32",
                                 "fused_ibn_g64")
        else:
            assert g.choices == d.choices
    # a paper-space vector is a grouped-space vector of the same network
    c = space.sample(np.random.default_rng(3))
    assert grouped.decode(c, "x").blocks == space.decode(c, "x").blocks


@pytest.mark.parametrize("kind, cin, e, nominal, want", [
    ("ibn", 64, 4, 64, 64),         # the Model Garden's rule where it divides
    ("ibn", 32, 3, 64, 32),         # 96 channels: 64 does not divide, gcd 32
    ("fused_ibn", 64, 4, 64, 64),   # MobileNet-EdgeTPU-V2's fused-grouped blocks: 4 groups
    ("fused_ibn", 32, 4, 32, 32),   # 4 groups of 8 inputs
    ("fused_ibn", 32, 3, 32, 24),   # 96 / 32 = 3 groups do not split 32 inputs: 4 groups
    ("fused_ibn", 96, 5, 32, 30),   # 480 / 32 = 15 -> 16 groups (a divisor of 96)
])
def test_group_size_rule(kind, cin, e, nominal, want):
    assert space_lib.group_size_for(kind, cin, e, nominal) == want


def test_grouped_space_decodes_to_specs_that_build_at_every_width(grouped):
    from mhmodels.builder import resolve
    rng = np.random.default_rng(4)
    seen = set()
    for _ in range(200):
        spec = grouped.decode(grouped.sample(rng), "x")
        seen |= {(b.kind, b.group_size) for b in spec.blocks if b.group_size}
        for width in (1.0, 0.75, 0.5, 0.35, 1.4):
            layers = resolve(spec, width)
            for r in layers:
                if r.groups:  # the groups split both sides of the grouped conv
                    conv_in = r.in_filters if r.layer.kind == "fused_ibn" else r.hidden
                    assert r.hidden % r.groups == 0 and conv_in % r.groups == 0
        assert grouped.decode(grouped.choices_for(spec), "x").blocks == spec.blocks
    assert {k for k, _ in seen} == {"ibn", "fused_ibn"} and len(seen) > 6


def test_grouped_space_bad_group_size_is_not_a_point(grouped):
    c = grouped.sample(np.random.default_rng(5))
    c[grouped.index["stage1/num_blocks"]] = 1
    c[grouped.index["stage1/block0/type"]] = grouped.block_types.index("ibn_g32")
    c[grouped.index["stage1/block0/expansion"]] = space_lib.EXPANSIONS.index(4)
    spec = grouped.decode(c, "x")
    i = next(i for i, b in enumerate(spec.blocks) if b.group_size)
    bad = dataclasses.replace(spec, blocks=spec.blocks[:i] + (dataclasses.replace(
        spec.blocks[i], group_size=16),) + spec.blocks[i + 1:])
    with pytest.raises(ValueError, match="not a point of the multi_hw_grouped space"):
        grouped.choices_for(bad)
    with pytest.raises(ValueError, match="not a point of the multi_hw space"):
        space_lib.get_space("multi_hw").choices_for(spec)


def test_grouped_space_logits_equal_in_keras3_and_tf_keras(grouped):
    """A decoded grouped architecture (both grouped kinds) builds in both front-ends with the
    same function."""
    from mhmodels.builder import build_model
    from mhmodels.qat import copy_weights
    c = np.zeros(len(grouped.decisions), np.int64)
    for name, value in (("stage0/num_blocks", 2), ("stage0/block0/expansion", 3),
                        ("stage0/block0/type", "fused_ibn_g32"), ("stage0/block1/expansion", 4),
                        ("stage0/block1/type", "ibn_g64"), ("stage1/block0/expansion", 6),
                        ("stage1/block0/type", "ibn_g32")):
        d = grouped.decisions[grouped.index[name]]
        c[grouped.index[name]] = d.choices.index(value)
    spec = grouped.decode(c, "g")
    assert [b.group_size for b in spec.blocks[:3]] == [24, 64, 32]
    shape = (32, 32, 3)
    images = np.random.default_rng(6).uniform(-1, 1, (2, *shape)).astype("float32")
    k3 = build_model(spec, 0.5, input_shape=shape, num_classes=7)
    twin = build_model(spec, 0.5, input_shape=shape, num_classes=7, frontend="tf_keras")
    copy_weights(k3, twin)
    np.testing.assert_allclose(twin(images, training=False).numpy(),
                               k3(images, training=False).numpy(), atol=1e-5)
