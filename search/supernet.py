"""The one-shot weight-sharing supernet of a search space (TuNAS-style).

``Supernet(space, num_classes)(images, choices)`` runs the child architecture ``choices`` (an
int vector, one entry per decision of ``space``) with weights shared by every child:

* **Filters by masking.** Every tensor is allocated at its widest setting (stage output filter
  ratio 2.0, expansion 6); a child with N channels uses the first N and the rest are multiplied
  by a 0/1 mask after every batch norm (+ activation), so unused channels are exactly zero and
  get zero gradient.
* **One op per block type, shared across kernel and expansion choices**: the regular block has one
  expand 1x1 [Cin, 6 Cin] and one 5x5 depthwise, the fused block one 5x5 conv [5, 5, Cin, 6 Cin];
  both feed one project 1x1 [6 Cin, Cout] per block position. Expansion e uses the first e*Cin
  hidden channels.
* **Kernel 3 = centre of the 5x5.** Kernel 3 multiplies the 5x5 by a mask that keeps its central
  3x3 (the same conv op runs either way, so no Python branching).
* **Expansion 1 is a proxy.** The builder's expansion-1 blocks have no expansion layer (ibn:
  depthwise on the input; fused: only the projection; a strided fused e1 block is the
  depthwise-separable one). The supernet runs them through the expansion layer with Cin hidden
  channels instead, so every choice of a block position shares one feature basis. Separate
  expansion-1 ops (4 ops per position instead of 2) measured worse on digits: children that mix
  ops with unrelated output bases interfere, and a supernet trained on uniform random children
  stayed at chance. Children without expansion-1 blocks equal ``mhmodels.build`` exactly (tested).
* **Grouped blocks** (the ``multi_hw_grouped`` space, issue #20): a fused-grouped block is the
  fused 5x5 conv masked block-diagonally (input group i -> output group i, the group count of
  ``space_lib.group_size_for``), so it shares that kernel with the fused block and across group
  sizes; a grouped regular block runs the shared expand 1x1, then one grouped 5x5 kernel
  [5, 5, 64, hidden] (Keras' grouped layout at group size 64: every group of size 32 or 64 lies
  inside one aligned block of 64 channels) masked to its group size, then the shared
  projection. Kernel 3 is its centre as above; op warm-up adds it (at group size 64) to the
  sum. At width != 1.0 the group sizes scale with the width (64 -> round8(64 w)), a proxy.
  Spaces without grouped types build exactly the variables and ops they had before.
* **Number of blocks by skipping**: a block beyond the stage's ``num_blocks`` is the identity on
  the residual path.
* **Op warm-up** (``all_ops=True``): every present block runs the sum of its regular and fused
  ops' hidden features into the shared projection. Children whose blocks mix the two types
  otherwise feed downstream layers features in unrelated bases; on digits, 600 steps of uniform
  random children reached 0.32 held-out accuracy with op warm-up over the first half vs 0.18
  without.
* **Reduced spaces** (``search.space.ReducedSpace``): the same weights; the filter warm-up
  trains the largest *allowed* child, and the op warm-up skips blocks whose type is fixed.
* **Batch norm always uses batch statistics** (training mode; there are no moving averages).
* The stem (3x3 s2) and the head (1x1 960 -> pool -> 1x1 1280 -> classifier) are fixed.

Which ops run is chosen with ``tf.switch_case`` on tensors, never Python control flow on tensor
values, so a forward pass traces once and runs inside ``strategy.run`` / on TPU; the choice vector
is an ordinary (per-replica) tensor.

``width`` scales every channel count of the supernet (round to a multiple of 8), a proxy that
makes a CPU search affordable: at width 1.0 the widest fused 5x5 convs alone hold ~1.5e8
weights. The architecture the controller learns is always decoded at width 1.0.

It is a ``tf.Module`` (plain ``tf.Variable`` weights) rather than a Keras layer: the search step
updates and checkpoints its variables directly under every ``tf.distribute`` strategy, which is
simplest and exact with plain variables (the standalone children are built with Keras by
``mhmodels.build``).
"""
from __future__ import annotations

import math

import numpy as np
import tensorflow as tf

from mhmodels.spec import round8
from . import space as space_lib
from .controller import replicated_variable, stateless_uniform

BN_EPSILON = 1e-3
MAX_KERNEL = max(space_lib.KERNELS)
MAX_EXPANSION = max(space_lib.EXPANSIONS)
# Channels per aligned block of the grouped regular block's kernel (every group size of the
# grouped space, 32 or 64 at width 1.0, divides it).
GROUP_BLOCK = 64


def _mask(total: int, active) -> tf.Tensor:
    """[1, 1, 1, total] float mask with ones on the first ``active`` channels."""
    return tf.cast(tf.range(total) < tf.cast(active, tf.int32), tf.float32)[None, None, None, :]


def batch_norm(x: tf.Tensor, gamma: tf.Tensor, beta: tf.Tensor) -> tf.Tensor:
    """Batch norm with the batch's own statistics (the search always runs in training mode)."""
    y, _, _ = tf.compat.v1.nn.fused_batch_norm(x, gamma, beta, epsilon=BN_EPSILON,
                                              is_training=True)
    return y


class Supernet(tf.Module):
    """Shared weights of every child of ``space``; call with (images, choices)."""

    def __init__(self, space: space_lib.SearchSpace, num_classes: int, width: float = 1.0,
                 seed: int = 0, name: str = "supernet"):
        super().__init__(name=name)
        if not width > 0:
            raise ValueError(f"width must be > 0, got {width}")
        self.space = space
        self.num_classes = int(num_classes)
        self.width = float(width)
        self._seed = int(seed)
        self._count = 0
        self.weights: dict[str, tf.Variable] = {}
        types = [space_lib.grouped_type(t) for t in space.block_types]
        self.grouped = any(nominal is not None for _, nominal in types)
        self._type_fused = tf.constant([kind == "fused_ibn" for kind, _ in types])
        self.group_max = self.scaled(GROUP_BLOCK)  # the grouped kernel's block at this width
        sc = self.scaled
        idx = space.index
        self.stem_filters = sc(space.stem_filters)
        self._add_conv("stem", 3, 3, self.stem_filters)
        self._add_bn("stem_bn", self.stem_filters)

        self.stage_channels = []  # per stage: channels at each filter-ratio choice
        self.blocks = []  # static description of each block position
        cin_max = self.stem_filters
        for s, stage in enumerate(space.stages):
            table = [sc(space.stage_filters(s, r)) for r in range(len(space_lib.FILTER_RATIOS))]
            self.stage_channels.append(tf.constant(table, tf.int32))
            cout_max = max(table)
            for b in range(max(space_lib.NUM_BLOCKS)):
                prefix = f"stage{s}/block{b}"
                hidden_max = MAX_EXPANSION * cin_max
                p = f"s{s}b{b}"
                self._add_conv(f"{p}_expand", 1, cin_max, hidden_max)
                self._add_bn(f"{p}_expand_bn", hidden_max)
                self._add_depthwise(f"{p}_dw", MAX_KERNEL, hidden_max)
                self._add_bn(f"{p}_dw_bn", hidden_max)
                self._add_conv(f"{p}_fused", MAX_KERNEL, cin_max, hidden_max)
                self._add_bn(f"{p}_fused_bn", hidden_max)
                self._add_conv(f"{p}_project", 1, hidden_max, cout_max)
                self._add_bn(f"{p}_project_bn", cout_max)
                self.blocks.append(dict(
                    stage=s, index=b, key=p, stride=stage.block_stride(b),
                    cin_max=cin_max, cout_max=cout_max, hidden_max=hidden_max,
                    i_expansion=idx[f"{prefix}/expansion"], i_kernel=idx[f"{prefix}/kernel"],
                    i_type=idx[f"{prefix}/type"], i_blocks=idx[f"stage{s}/num_blocks"],
                    i_ratio=idx[f"stage{s}/filter_ratio"]))
                if self.grouped:
                    self._add_grouped(self.blocks[-1])
                cin_max = cout_max
        self.head_filters = sc(space.head_filters)
        self.top_filters = sc(space.top_filters)
        self._add_conv("head", 1, cin_max, self.head_filters)
        self._add_bn("head_bn", self.head_filters)
        self._add_conv("top", 1, self.head_filters, self.top_filters)
        self._add_bn("top_bn", self.top_filters)
        self._add_dense("classifier", self.top_filters, self.num_classes)

        kernel_mask = np.zeros([MAX_KERNEL, MAX_KERNEL, 1, 1], np.float32)
        kernel_mask[1:4, 1:4] = 1.0
        self._centre3 = tf.constant(kernel_mask)
        self._expansions = tf.constant(space_lib.EXPANSIONS, tf.int32)
        # The largest setting of every width/ops decision (for the warm-up); type is left as is.
        # In a reduced space: the largest allowed one (the warm-ups stay inside the space).
        allowed = space_lib.choice_mask(space)
        largest = np.zeros(len(space.decisions), np.int32)
        override = np.zeros(len(space.decisions), bool)
        for i, d in enumerate(space.decisions):
            field = d.name.rsplit("/", 1)[1]
            if field in ("num_blocks", "filter_ratio", "expansion", "kernel"):
                values = np.where(allowed[i, :d.size], np.asarray(d.choices, float), -np.inf)
                largest[i] = int(np.argmax(values))
                override[i] = True
        for blk in self.blocks:  # op warm-up only where every block type is allowed
            types = space.decisions[blk["i_type"]].size
            blk["both_types"] = bool(allowed[blk["i_type"], :types].all())
        self._largest = tf.constant(largest)
        self._override = tf.constant(override)

    # -- variables ---------------------------------------------------------------------------
    def scaled(self, channels: int) -> int:
        return int(channels) if self.width == 1.0 else round8(channels * self.width)

    def _init(self, shape, fan_out: int) -> tf.Tensor:
        """He (fan-out) truncated normal, as the builder; seeded statelessly per variable."""
        self._count += 1
        std = math.sqrt(2.0 / max(1, fan_out)) / 0.87962566103423978
        return std * tf.random.stateless_truncated_normal(shape, seed=[self._seed, self._count])

    def _var(self, name: str, value) -> None:
        self.weights[name] = replicated_variable(value, name=name)

    def _add_conv(self, name: str, kernel: int, cin: int, cout: int) -> None:
        self._var(name, self._init([kernel, kernel, cin, cout], kernel * kernel * cout))

    def _add_depthwise(self, name: str, kernel: int, channels: int) -> None:
        self._var(name, self._init([kernel, kernel, channels, 1], kernel * kernel))

    def _add_bn(self, name: str, channels: int) -> None:
        self._var(f"{name}_gamma", tf.ones([channels]))
        self._var(f"{name}_beta", tf.zeros([channels]))

    def _add_dense(self, name: str, cin: int, cout: int) -> None:
        # Fan-in scaled (logits of variance ~1/3 at the start). The builder's fan-out init
        # suits 1001 ImageNet classes; with 10 classes it starts with logits of std ~5, which
        # slows a short search down a lot.
        limit = math.sqrt(1.0 / cin)
        self._count += 1
        self._var(f"{name}_kernel", tf.random.stateless_uniform(
            [cin, cout], seed=[self._seed, self._count], minval=-limit, maxval=limit))
        self._var(f"{name}_bias", tf.zeros([cout]))

    def _add_grouped(self, blk: dict) -> None:
        """The grouped regular block's kernel and BN, and the tables of group sizes by (input
        channel choice, expansion, type) at width 1.0: `fused_groups` (the fused-grouped
        conv's group count, 1 for the other types) and `ibn_size` (the grouped regular
        conv's group size, 0 for the other types)."""
        s, b, p = blk["stage"], blk["index"], blk["key"]
        space = self.space
        pad = -(-blk["hidden_max"] // self.group_max) * self.group_max
        blk["hidden_pad"] = pad
        self._add_grouped_conv(f"{p}_group", MAX_KERNEL, self.group_max, pad)
        self._add_bn(f"{p}_group_bn", blk["hidden_max"])
        if b > 0:
            cins, blk["i_cin"] = [space.stage_filters(s, r) for r in
                                  range(len(space_lib.FILTER_RATIOS))], blk["i_ratio"]
        elif s > 0:
            cins = [space.stage_filters(s - 1, r) for r in range(len(space_lib.FILTER_RATIOS))]
            blk["i_cin"] = space.index[f"stage{s - 1}/filter_ratio"]
        else:
            cins, blk["i_cin"] = [space.stem_filters], None
        shape = (len(cins), len(space_lib.EXPANSIONS), len(space.block_types))
        groups, sizes = np.ones(shape, np.int32), np.zeros(shape, np.int32)
        for (c, e, t), _ in np.ndenumerate(groups):
            kind, group_size = space.block_kind(space.block_types[t], cins[c],
                                                space_lib.EXPANSIONS[e], 1)
            if group_size is not None and kind == "fused_ibn":
                groups[c, e, t] = space_lib.EXPANSIONS[e] * cins[c] // group_size
            elif group_size is not None:
                sizes[c, e, t] = group_size
        blk["fused_groups"], blk["ibn_size"] = tf.constant(groups), tf.constant(sizes)

    def _add_grouped_conv(self, name: str, kernel: int, group: int, channels: int) -> None:
        """[K, K, group, channels]: Keras' grouped-conv layout (fan-out K * K * channels, as
        the builder's grouped Conv2D is initialised)."""
        self._var(name, self._init([kernel, kernel, group, channels], kernel * kernel * channels))

    @property
    def trainable_weights(self) -> list[tf.Variable]:
        return [self.weights[k] for k in sorted(self.weights)]

    def num_weights(self) -> int:
        return int(sum(np.prod(v.shape) for v in self.weights.values()))

    # -- ops ---------------------------------------------------------------------------------
    def _bn(self, x, name):
        return batch_norm(x, self.weights[f"{name}_gamma"], self.weights[f"{name}_beta"])

    def _conv(self, x, name, stride=1, kernel=None):
        w = self.weights[name]
        if kernel is not None:
            w = w * kernel
        return tf.nn.conv2d(x, w, strides=stride, padding="SAME")

    def _fused_group_mask(self, blk, cin_act, hidden_act, groups):
        """[1, 1, cin_max, hidden_max] 0/1: input channel i feeds output channel o when both
        are in the same of `groups` groups (channel c of n active is in group c * groups // n:
        the grouped conv's split at width 1.0, a proxy of it at other widths)."""
        gi = tf.range(blk["cin_max"]) * groups // cin_act
        go = tf.range(blk["hidden_max"]) * groups // hidden_act
        return tf.cast(gi[:, None] == go[None, :], tf.float32)[None, None]

    def _grouped_conv(self, h, blk, stride, kernel, size):
        """The grouped regular block's KxK conv at group size `size` (width 1.0 channels; a
        scalar tensor or int): the [K, K, group_max, hidden_pad] kernel, each output's
        inputs masked to its own group of size * group_max / 64 channels."""
        g = self.group_max * size // GROUP_BLOCK
        local = tf.range(self.group_max) // g
        out = tf.range(blk["hidden_pad"]) % self.group_max // g
        mask = tf.cast(local[:, None] == out[None, :], tf.float32)[None, None]
        w = self.weights[f"{blk['key']}_group"] * kernel * mask
        extra = blk["hidden_pad"] - blk["hidden_max"]
        if extra:
            h = tf.pad(h, [[0, 0], [0, 0], [0, 0], [0, extra]])
        y = tf.nn.conv2d(h, w, strides=stride, padding="SAME")
        return y[..., :blk["hidden_max"]] if extra else y

    def _depthwise(self, x, name, stride, kernel):
        w = self.weights[name] * kernel
        return tf.nn.depthwise_conv2d(x, w, strides=[1, stride, stride, 1], padding="SAME")

    # -- choices -----------------------------------------------------------------------------
    def largest(self, choices) -> tf.Tensor:
        """The warm-up child: ``choices`` with the largest filters / expansion / blocks / kernel."""
        return tf.where(self._override, self._largest, tf.cast(choices, tf.int32))

    def warmup(self, choices, probability, seed) -> tuple[tf.Tensor, tf.Tensor]:
        """TuNAS's two warm-ups, each drawn independently with ``probability`` (scalar tensor).

        Returns (the largest child or ``choices``, whether to run all ops): filter warm-up
        trains the largest filters / expansion / blocks / kernel; op warm-up sums the regular and
        the fused op of every block, so both learn to feed the same downstream weights.
        """
        u = stateless_uniform([2], seed)
        train_choices = tf.where(u[0] < probability, self.largest(choices),
                                 tf.cast(choices, tf.int32))
        return train_choices, u[1] < probability

    # -- forward -----------------------------------------------------------------------------
    @tf.autograph.experimental.do_not_convert  # no Python control flow on tensors: tracing
    def __call__(self, images, choices, all_ops=False, return_blocks: bool = False):
        """Logits [B, num_classes] of the child ``choices`` (int [D]) on ``images``.

        ``all_ops`` (a bool or scalar bool tensor): op warm-up, both ops of every block.

        With ``return_blocks`` also the output of every block position (at its widest shape,
        unused channels zero), for tests and inspection.
        """
        choices = tf.cast(choices, tf.int32)
        x = self._conv(images, "stem", stride=2)
        x = tf.nn.relu(self._bn(x, "stem_bn"))
        cin_act = tf.constant(self.stem_filters, tf.int32)
        outputs = []
        for blk in self.blocks:
            x, cin_act = self._block(x, cin_act, blk, choices, all_ops)
            outputs.append(x)
        x = tf.nn.relu(self._bn(self._conv(x, "head"), "head_bn"))
        x = tf.reduce_mean(x, axis=[1, 2], keepdims=True)
        x = tf.nn.relu(self._bn(self._conv(x, "top"), "top_bn"))
        x = tf.reshape(x, [-1, self.top_filters])
        logits = tf.matmul(x, self.weights["classifier_kernel"]) + self.weights["classifier_bias"]
        return (logits, outputs) if return_blocks else logits

    def _block(self, x, cin_act, blk, choices, all_ops):
        p, stride = blk["key"], blk["stride"]
        cin_max, cout_max, hidden_max = blk["cin_max"], blk["cout_max"], blk["hidden_max"]
        s, b = blk["stage"], blk["index"]
        cout_act = tf.gather(self.stage_channels[s], choices[blk["i_ratio"]])
        expansion = tf.gather(self._expansions, choices[blk["i_expansion"]])
        kernel = tf.where(choices[blk["i_kernel"]] == space_lib.KERNELS.index(5),
                          tf.ones_like(self._centre3), self._centre3)
        present = b < choices[blk["i_blocks"]] + 1
        m_hid = _mask(hidden_max, expansion * cin_act)
        m_out = _mask(cout_max, cout_act)
        if self.grouped:
            fused = tf.gather(self._type_fused, choices[blk["i_type"]])
            at = [0 if blk["i_cin"] is None else choices[blk["i_cin"]],
                  choices[blk["i_expansion"]], choices[blk["i_type"]]]
            fused_groups = tf.gather_nd(blk["fused_groups"], at)
            ibn_size = tf.gather_nd(blk["ibn_size"], at)
            fused_kernel = kernel * self._fused_group_mask(blk, cin_act, expansion * cin_act,
                                                           fused_groups)
        else:
            fused = choices[blk["i_type"]] == space_lib.BLOCK_TYPES.index("fused_ibn")
            fused_kernel = kernel

        def project(h):
            return self._bn(self._conv(h, f"{p}_project"), f"{p}_project_bn") * m_out

        def expanded():
            return tf.nn.relu(self._bn(self._conv(x, f"{p}_expand"), f"{p}_expand_bn")) * m_hid

        def ibn_hidden(h):
            h = self._depthwise(h, f"{p}_dw", stride, kernel)
            return tf.nn.relu(self._bn(h, f"{p}_dw_bn")) * m_hid

        def fused_hidden(fused_kernel=fused_kernel):
            h = self._conv(x, f"{p}_fused", stride=stride, kernel=fused_kernel)
            return tf.nn.relu(self._bn(h, f"{p}_fused_bn")) * m_hid

        ops = [lambda: project(ibn_hidden(expanded())), lambda: project(fused_hidden())]
        if self.grouped:  # + the grouped regular op; op warm-up: all three (grouped at 64)
            def group_hidden(h, size):
                return tf.nn.relu(self._bn(self._grouped_conv(h, blk, stride, kernel, size),
                                           f"{p}_group_bn")) * m_hid
            ops.append(lambda: project(ibn_hidden(h := expanded()) + fused_hidden(kernel) +
                                       group_hidden(h, GROUP_BLOCK)))
            ops.append(lambda: project(group_hidden(expanded(), ibn_size)))
            kind = tf.where(ibn_size > 0, 3, tf.cast(fused, tf.int32))
        else:
            ops.append(lambda: project(ibn_hidden(expanded()) + fused_hidden()))  # op warm-up
            kind = tf.cast(fused, tf.int32)
        if stride != 1:  # a strided fused block of expansion 1 is the depthwise-separable one
            kind = tf.where(tf.logical_and(fused, expansion == 1), 0, kind)
        # the op warm-up runs every op only where the space allows every block type here
        all_ops = tf.logical_and(tf.convert_to_tensor(all_ops), blk["both_types"])
        branch = tf.where(all_ops, 2, kind)
        if b > 0:
            # Same stage, stride 1: same shapes, so the residual always applies and an absent
            # block is the identity.
            branch = tf.where(present, branch, len(ops))
            return x + tf.switch_case(branch, ops + [lambda: tf.zeros_like(x)]), cout_act
        out = tf.switch_case(branch, ops)
        if stride == 1:
            # First block of a stride-1 stage: residual only when in == out channels.
            if cin_max < cout_max:
                shortcut = tf.pad(x, [[0, 0], [0, 0], [0, 0], [0, cout_max - cin_max]])
            else:
                shortcut = x[..., :cout_max]
            out = out + shortcut * tf.cast(cin_act == cout_act, tf.float32)
        return out, cout_act
