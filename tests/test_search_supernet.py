"""Supernet: shapes, masking, skipping, kernel sharing, and agreement with the built child."""
import numpy as np
import pytest
import tensorflow as tf

import mhmodels
from search import space as space_lib
from search.supernet import Supernet


def tiny_space():
    # A stride-2 stage and a stride-1 stage (whose first block has a conditional residual).
    return space_lib.SearchSpace(stages=(space_lib.Stage(32, 2), space_lib.Stage(32, 1)),
                                 stem_filters=32, head_filters=64, top_filters=64, name="tiny")


def supernet_setup(space, seed: int):
    """(space, supernet, 8 images, traced forward returning the blocks): the fixtures' parts."""
    net = Supernet(space, num_classes=5, width=1.0, seed=seed)
    images = tf.random.stateless_normal([8, 16, 16, 3], seed=[0, 2 * seed - 1])
    fn = tf.function(lambda x, c: net(x, c, return_blocks=True))
    return space, net, images, fn


@pytest.fixture(scope="module")
def tiny():
    return supernet_setup(tiny_space(), seed=1)


def set_choice(space, choices, name, value):
    d = space.decisions[space.index[name]]
    choices = np.array(choices)
    choices[space.index[name]] = d.choices.index(value)
    return choices


def test_output_shape_and_all_children_run(tiny):
    space, net, images, fn = tiny
    rng = np.random.default_rng(0)
    for _ in range(4):
        logits, blocks = fn(images, tf.constant(space.sample(rng), tf.int32))
        assert logits.shape == (8, 5) and np.all(np.isfinite(logits.numpy()))
        assert len(blocks) == len(space.stages) * 4


def test_unused_channels_are_exactly_zero(tiny):
    space, net, images, fn = tiny
    rng = np.random.default_rng(1)
    for _ in range(3):
        c = space.sample(rng)
        _, blocks = fn(images, tf.constant(c, tf.int32))
        for s in range(len(space.stages)):
            active = space.stage_filters(s, int(c[space.index[f"stage{s}/filter_ratio"]]))
            for b in range(4):
                out = blocks[s * 4 + b].numpy()
                assert out.shape[-1] == space.max_stage_filters(s)
                assert np.all(out[..., active:] == 0.0)
                assert np.any(out[..., :active] != 0.0)


def test_absent_block_choices_do_not_matter(tiny):
    space, net, images, fn = tiny
    rng = np.random.default_rng(2)
    c = set_choice(space, space.sample(rng), "stage0/num_blocks", 2)
    ref, blocks = fn(images, tf.constant(c, tf.int32))
    # blocks 2, 3 of stage 0 are the identity
    np.testing.assert_array_equal(blocks[1].numpy(), blocks[2].numpy())
    np.testing.assert_array_equal(blocks[1].numpy(), blocks[3].numpy())
    for field, value in (("expansion", 6), ("kernel", 3), ("type", "fused_ibn"),
                         ("expansion", 1), ("kernel", 5), ("type", "ibn")):
        c2 = set_choice(space, c, f"stage0/block3/{field}", value)
        c2 = set_choice(space, c2, f"stage0/block2/{field}", value)
        out, _ = fn(images, tf.constant(c2, tf.int32))
        np.testing.assert_array_equal(ref.numpy(), out.numpy())
    # ... while a present block's choice does change the output
    c3 = set_choice(space, c, "stage0/block1/expansion",
                    2 if space.choice(c, "stage0/block1/expansion") != 2 else 3)
    out, _ = fn(images, tf.constant(c3, tf.int32))
    assert not np.allclose(ref.numpy(), out.numpy())


def test_kernel3_is_the_centre_of_the_5x5():
    space = tiny_space()
    net = Supernet(space, num_classes=5, width=1.0, seed=3)
    images = tf.random.stateless_normal([8, 16, 16, 3], seed=[0, 2])
    c = np.zeros(len(space.decisions), np.int64)
    c = set_choice(space, c, "stage0/num_blocks", 2)
    c = set_choice(space, c, "stage0/block1/expansion", 3)
    k3 = set_choice(space, c, "stage0/block1/kernel", 3)
    k5 = set_choice(space, c, "stage0/block1/kernel", 5)
    a, b = net(images, k3), net(images, k5)
    assert not np.allclose(a.numpy(), b.numpy())
    w = net.weights["s0b1_dw"]
    ring = np.ones(w.shape, np.float32)
    ring[1:4, 1:4] = 0.0
    w.assign(w * (1.0 - ring))  # zero the outer ring: k5 must now equal k3
    np.testing.assert_allclose(net(images, k3).numpy(), net(images, k5).numpy(), atol=1e-5)


def test_all_ops_sums_the_regular_and_fused_hidden_features(tiny):
    """Op warm-up: with the fused conv zeroed its hidden features are zero (ReLU of a zero
    beta), so all ops == the regular op alone; with it intact all ops differ from both."""
    space, net, images, fn = tiny
    c = set_choice(space, space.sample(np.random.default_rng(5)), "stage0/num_blocks", 4)
    c = set_choice(space, c, "stage0/block1/expansion", 4)
    regular = np.array(c)
    for i, d in enumerate(space.decisions):
        if d.name.endswith("/type"):
            regular[i] = d.choices.index("ibn")  # every block regular
    fused = set_choice(space, regular, "stage0/block1/type", "fused_ibn")
    both = net(images, regular, all_ops=True).numpy()
    for single in (regular, fused):
        assert not np.allclose(both, net(images, single).numpy(), atol=1e-3)
    weights = [v for name, v in net.weights.items() if name.endswith("_fused")]
    saved = [v.numpy() for v in weights]
    try:
        for v in weights:
            v.assign(tf.zeros_like(v))
        np.testing.assert_allclose(net(images, fused, all_ops=True).numpy(),
                                   net(images, regular).numpy(), rtol=1e-4, atol=1e-4)
    finally:
        for v, value in zip(weights, saved):
            v.assign(value)


def copy_into_keras(net, space, choices, model, skip_grouped: bool = False):
    """Put the supernet's (sliced) weights into the standalone Keras child (`skip_grouped`:
    leave the grouped layers to the caller)."""
    w = {k: v.numpy() for k, v in net.weights.items()}

    def bn(layer_name, key, n):
        layer = model.get_layer(layer_name)
        mm, mv = layer.get_weights()[2:]
        layer.set_weights([w[f"{key}_gamma"][:n], w[f"{key}_beta"][:n], mm, mv])

    def k(kernel, size):
        return kernel if size == 5 else kernel[1:4, 1:4]

    model.get_layer("stem").set_weights([w["stem"]])
    bn("stem_bn", "stem_bn", net.stem_filters)
    cin = space.stem_filters
    for i, ab in enumerate(space.active_blocks(choices)):
        assert ab.expansion > 1, "the supernet runs expansion 1 through the expansion layer"
        p, name = f"s{ab.stage}b{ab.index}", f"block{i}"
        hidden = ab.expansion * ab.in_filters
        grouped = skip_grouped and (
            f"{name}_group" in [layer.name for layer in model.layers] or
            (ab.kind == "fused_ibn" and model.get_layer(f"{name}_fused").groups > 1))
        if grouped and ab.kind == "fused_ibn":
            bn(f"{name}_fused_bn", f"{p}_fused_bn", hidden)
        elif grouped:
            pass
        elif ab.kind == "ibn":
            model.get_layer(f"{name}_expand").set_weights([w[f"{p}_expand"][:, :, :cin, :hidden]])
            bn(f"{name}_expand_bn", f"{p}_expand_bn", hidden)
            model.get_layer(f"{name}_dw").set_weights([k(w[f"{p}_dw"][:, :, :hidden], ab.kernel)])
            bn(f"{name}_dw_bn", f"{p}_dw_bn", hidden)
        else:
            model.get_layer(f"{name}_fused").set_weights(
                [k(w[f"{p}_fused"][:, :, :cin, :hidden], ab.kernel)])
            bn(f"{name}_fused_bn", f"{p}_fused_bn", hidden)
        model.get_layer(f"{name}_project").set_weights(
            [w[f"{p}_project"][:, :, :hidden, :ab.filters]])
        bn(f"{name}_project_bn", f"{p}_project_bn", ab.filters)
        cin = ab.filters
    model.get_layer("head0").set_weights([w["head"][:, :, :cin]])
    bn("head0_bn", "head_bn", space.head_filters)
    model.get_layer("top0").set_weights([w["top"]])
    bn("top0_bn", "top_bn", space.top_filters)
    model.get_layer("classifier").set_weights([w["classifier_kernel"], w["classifier_bias"]])


def no_expansion_one(space, choices, rng):
    """``choices`` with every expansion-1 choice redrawn from 2..6."""
    choices = np.array(choices)
    for i, d in enumerate(space.decisions):
        if d.name.endswith("/expansion") and d.choices[choices[i]] == 1:
            choices[i] = rng.integers(1, d.size)
    return choices


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_supernet_child_equals_standalone_child(tiny, seed):
    """Same weights, batch statistics: the supernet's child == mhmodels.build(decoded spec).

    For every expansion > 1; expansion 1 is a documented proxy (see the next test)."""
    space, net, images, fn = tiny
    rng = np.random.default_rng(100 + seed)
    c = no_expansion_one(space, space.sample(rng), rng)
    if seed == 0:  # also cover a fused block and a conditional residual of the stride-1 stage
        c = set_choice(space, c, "stage0/num_blocks", 2)
        c = set_choice(space, c, "stage0/block1/type", "fused_ibn")
        c = set_choice(space, c, "stage1/filter_ratio", 1.0)
        c = set_choice(space, c, "stage0/filter_ratio", 1.0)
    spec = space.decode(c, "child")
    model = mhmodels.build(spec, input_shape=(16, 16, 3), num_classes=5, dropout=0.0)
    copy_into_keras(net, space, c, model)
    want = model(images, training=True).numpy()
    got, _ = fn(images, tf.constant(c, tf.int32))
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-4, atol=1e-4)


def test_expansion_one_shares_the_expansion_path(tiny):
    """Expansion 1 runs the expansion layer on its first Cin channels (one op per block type,
    one feature basis), so it is expansion 2 with the second half of the hidden channels off."""
    space, net, images, fn = tiny
    rng = np.random.default_rng(7)
    c = set_choice(space, space.sample(rng), "stage0/num_blocks", 2)
    c = set_choice(space, c, "stage0/block1/type", "ibn")
    e1 = set_choice(space, c, "stage0/block1/expansion", 1)
    e2 = set_choice(space, c, "stage0/block1/expansion", 2)
    out1, _ = fn(images, tf.constant(e1, tf.int32))
    out2, _ = fn(images, tf.constant(e2, tf.int32))
    assert not np.allclose(out1.numpy(), out2.numpy())
    cin = space.stage_filters(0, int(c[space.index["stage0/filter_ratio"]]))  # block1's input
    weights = {name: net.weights[name] for name in ("s0b1_expand", "s0b1_dw", "s0b1_project")}
    saved = {name: v.numpy() for name, v in weights.items()}
    try:  # with hidden channels cin..2cin cut off everywhere, e2 must equal e1
        for name, axis in (("s0b1_expand", 3), ("s0b1_dw", 2), ("s0b1_project", 2)):
            value = saved[name].copy()
            index = [slice(None)] * 4
            index[axis] = slice(cin, None)
            value[tuple(index)] = 0.0
            weights[name].assign(value)
        a, _ = fn(images, tf.constant(e1, tf.int32))
        b, _ = fn(images, tf.constant(e2, tf.int32))
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-4, atol=1e-4)
    finally:
        for name, v in weights.items():
            v.assign(saved[name])


def test_largest_child_and_warmup_choice():
    space = tiny_space()
    net = Supernet(space, num_classes=5, width=0.5)
    c = np.zeros(len(space.decisions), np.int64)
    big = net.largest(c).numpy()
    assert space.choice(big, "stage0/num_blocks") == 4
    assert space.choice(big, "stage1/filter_ratio") == 2.0
    assert space.choice(big, "stage1/block2/expansion") == 6
    assert space.choice(big, "stage1/block2/kernel") == 5
    assert space.choice(big, "stage1/block2/type") == "ibn"  # type is never overridden
    warm, all_ops = net.warmup(c, 1.0, [0, 1])
    np.testing.assert_array_equal(warm.numpy(), big)
    assert bool(all_ops)
    cold, all_ops = net.warmup(c, 0.0, [0, 1])
    np.testing.assert_array_equal(cold.numpy(), c)
    assert not bool(all_ops)
    # the two warm-ups are drawn independently: over many seeds all four combinations occur
    seen = {(bool(np.any(w.numpy() != c)), bool(a))
            for w, a in (net.warmup(c, 0.5, [0, i]) for i in range(40))}
    assert seen == {(False, False), (False, True), (True, False), (True, True)}
    # width 0.5 halves the channels (multiples of 8)
    assert net.stem_filters == 16 and net.blocks[-1]["cout_max"] == 32


@pytest.mark.slow
def test_full_space_supernet_runs_multi_max():
    space = space_lib.get_space("multi_hw")
    net = Supernet(space, num_classes=10, width=0.25)
    c = space.choices_for(mhmodels.get_spec("multi_max"))
    logits = net(tf.random.stateless_normal([4, 32, 32, 3], seed=[1, 1]), c)
    assert logits.shape == (4, 10) and np.all(np.isfinite(logits.numpy()))


# -- the grouped space (issue #20) ----------------------------------------------------------------

def tiny_grouped_space():
    return space_lib.GroupedSearchSpace(
        stages=(space_lib.Stage(32, 2), space_lib.Stage(64, 1)), stem_filters=32,
        head_filters=64, top_filters=64, name="tiny_grouped")


@pytest.fixture(scope="module")
def tiny_grouped():
    return supernet_setup(tiny_grouped_space(), seed=2)


def copy_grouped_into_keras(net, space, choices, model):
    """`copy_into_keras` for grouped blocks: the fused-grouped kernel is the fused kernel's
    block diagonal, the grouped regular kernel a slice of the [K, K, 64, C] grouped kernel."""
    w = {k: v.numpy() for k, v in net.weights.items()}
    plain = np.array(choices)
    for i, d in enumerate(space.decisions):  # the base copier sees only the two paper types
        if d.name.endswith("/type"):
            plain[i] = space_lib.BLOCK_TYPES.index(space_lib.grouped_type(d.choices[plain[i]])[0])
    copy_into_keras(net, space_lib.SearchSpace(space.stages, space.stem_filters,
                                               space.head_filters, space.top_filters),
                    plain, model, skip_grouped=True)

    def k(kernel, size):
        return kernel if size == 5 else kernel[1:4, 1:4]

    for i, ab in enumerate(space.active_blocks(choices)):
        if ab.group_size is None:
            continue
        p, name, cin = f"s{ab.stage}b{ab.index}", f"block{i}", ab.in_filters
        hidden, size = ab.expansion * cin, ab.group_size
        groups = hidden // size
        if ab.kind == "fused_ibn":
            full, per_in = w[f"{p}_fused"], cin // groups
            kernel = np.stack([full[:, :, (o // size) * per_in:(o // size + 1) * per_in, o]
                               for o in range(hidden)], axis=-1)
            model.get_layer(f"{name}_fused").set_weights([k(kernel, ab.kernel)])
        else:
            model.get_layer(f"{name}_expand").set_weights([w[f"{p}_expand"][:, :, :cin, :hidden]])
            full = w[f"{p}_group"]
            kernel = np.stack([full[:, :, (o % 64) // size * size:(o % 64) // size * size + size,
                                    o] for o in range(hidden)], axis=-1)
            model.get_layer(f"{name}_group").set_weights([k(kernel, ab.kernel)])
            layer = model.get_layer(f"{name}_group_bn")
            mm, mv = layer.get_weights()[2:]
            layer.set_weights([w[f"{p}_group_bn_gamma"][:hidden], w[f"{p}_group_bn_beta"][:hidden],
                               mm, mv])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_grouped_supernet_child_equals_standalone_child(tiny_grouped, seed):
    """Same weights, batch statistics: the supernet's grouped child == mhmodels.build of the
    decoded spec, with grouped regular and fused-grouped blocks of both group sizes."""
    space, net, images, fn = tiny_grouped
    rng = np.random.default_rng(200 + seed)
    c = no_expansion_one(space, space.sample(rng), rng)
    types = [("ibn_g32", "fused_ibn_g64"), ("fused_ibn_g32", "ibn_g64"),
             ("ibn_g64", "fused_ibn_g32")][seed]
    c = set_choice(space, c, "stage0/num_blocks", 2)
    c = set_choice(space, c, "stage0/block0/type", types[0])
    c = set_choice(space, c, "stage0/block1/type", types[1])
    c = set_choice(space, c, "stage0/block0/expansion", (3, 4, 6)[seed])
    c = set_choice(space, c, "stage1/block0/type", "ibn_g32")
    spec = space.decode(c, "child")
    assert sum(1 for b in spec.blocks if b.group_size) >= 3
    model = mhmodels.build(spec, input_shape=(16, 16, 3), num_classes=5, dropout=0.0)
    copy_grouped_into_keras(net, space, c, model)
    want = model(images, training=True).numpy()
    got, _ = fn(images, tf.constant(c, tf.int32))
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-4, atol=1e-4)


def test_group_sizes_share_one_kernel(tiny_grouped):
    """Group size 64 with the off-diagonal 32x32 blocks of the grouped kernel zeroed equals
    group size 32; fused-grouped == fused with the fused kernel's off-diagonal blocks zeroed."""
    space, net, images, fn = tiny_grouped
    c = np.zeros(len(space.decisions), np.int64)
    c = set_choice(space, c, "stage0/num_blocks", 2)
    c = set_choice(space, c, "stage0/block1/expansion", 4)  # 128 hidden: 2 x 64 or 4 x 32
    g32 = set_choice(space, c, "stage0/block1/type", "ibn_g32")
    g64 = set_choice(space, c, "stage0/block1/type", "ibn_g64")
    assert not np.allclose(net(images, g32).numpy(), net(images, g64).numpy())
    v = net.weights["s0b1_group"]
    saved = v.numpy()
    try:
        off = np.ones(saved.shape, np.float32)
        for o in range(saved.shape[-1]):
            off[:, :, (o % 64) // 32 * 32:(o % 64) // 32 * 32 + 32, o] = 0.0
        v.assign(saved * (1.0 - off))
        np.testing.assert_allclose(net(images, g32).numpy(), net(images, g64).numpy(),
                                   atol=1e-5)
    finally:
        v.assign(saved)
    fused = set_choice(space, c, "stage0/block1/type", "fused_ibn")
    fg = set_choice(space, c, "stage0/block1/type", "fused_ibn_g32")  # 32 -> 128: 4 groups
    v = net.weights["s0b1_fused"]
    saved = v.numpy()
    try:
        mask = np.zeros(saved.shape, np.float32)
        for g in range(4):
            mask[:, :, g * 8:(g + 1) * 8, g * 32:(g + 1) * 32] = 1.0
        v.assign(saved * mask)
        np.testing.assert_allclose(net(images, fg).numpy(), net(images, fused).numpy(),
                                   atol=1e-5)
    finally:
        v.assign(saved)


def test_grouped_space_all_ops_and_widths_run():
    space = tiny_grouped_space()
    for width in (0.25, 0.5):
        net = Supernet(space, num_classes=5, width=width, seed=4)
        rng = np.random.default_rng(9)
        images = tf.random.stateless_normal([4, 16, 16, 3], seed=[0, 4])
        for all_ops in (False, True):
            logits = net(images, space.sample(rng), all_ops=all_ops)
            assert logits.shape == (4, 5) and np.all(np.isfinite(logits.numpy()))


def test_paper_space_supernet_has_no_grouped_weights(tiny):
    space, net, images, fn = tiny
    assert not net.grouped and not any(k.endswith("_group") for k in net.weights)
