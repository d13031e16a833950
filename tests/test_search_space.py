"""The multi-hardware search space: decisions, decoding, and its inverse `choices_for`."""
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
