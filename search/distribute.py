"""tf.distribute plumbing of the search: replica-context weight updates.

The strategies themselves (default | mirrored | multi_worker | tpu) come from
``mhmodels.distribute``, shared with training; they are re-exported here.

Update scheme: every replica samples its own child, computes its gradients, all-reduces them
(mean) and then applies the *same* update to variables created with
``aggregation=ONLY_FIRST_REPLICA`` (see ``search.controller.replicated_variable``). Because every
replica computes identical values, the mirrored copies stay bit-identical, with no merge_call
plumbing in the optimizers and the same code under every strategy.
"""
from __future__ import annotations

import math

import tensorflow as tf

from mhmodels.distribute import (STRATEGIES, configure_cpu_devices, is_chief,  # noqa: F401
                                  make_strategy)
from .controller import all_reduce_mean, replicated_variable

OPTIMIZERS = ("momentum", "rmsprop")


def cosine_learning_rate(base: float, step, total_steps: int) -> tf.Tensor:
    """base * 0.5 * (1 + cos(pi * step / total)), TuNAS's shared-weights schedule."""
    progress = tf.minimum(tf.cast(step, tf.float32) / float(max(1, total_steps)), 1.0)
    return base * 0.5 * (1.0 + tf.cos(math.pi * progress))


class WeightOptimizer(tf.Module):
    """Momentum SGD (Nesterov off) or RMSProp for the shared weights, replica-context safe.

    ``apply(grads, variables, learning_rate)`` must be called in replica context with gradients
    that are *not* reduced yet: it all-reduces them (mean over replicas), adds L2 weight decay
    on kernels (variables whose rank is > 1) and updates the variables and their slots.
    """

    def __init__(self, variables, kind: str = "momentum", momentum: float = 0.9,
                 rho: float = 0.9, epsilon: float = 1e-3, weight_decay: float = 4e-5,
                 name: str = "weight_optimizer"):
        super().__init__(name=name)
        if kind not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {kind!r}")
        self.kind = kind
        self.momentum = float(momentum)
        self.rho = float(rho)
        self.epsilon = float(epsilon)
        self.weight_decay = float(weight_decay)
        self.slots = [replicated_variable(tf.zeros(v.shape), f"slot_{i}", trainable=False)
                      for i, v in enumerate(variables)]
        if kind == "rmsprop":
            self.mean_squares = [replicated_variable(tf.ones(v.shape), f"ms_{i}",
                                                     trainable=False)
                                 for i, v in enumerate(variables)]

    def apply(self, grads, variables, learning_rate) -> None:
        grads = all_reduce_mean(list(grads))
        for i, (g, v) in enumerate(zip(grads, variables)):
            if g is None:
                continue
            if self.weight_decay and len(v.shape) > 1:
                g = g + self.weight_decay * v
            slot = self.slots[i]
            if self.kind == "momentum":
                # Fused kernel: slot = momentum * slot + g; v -= lr * slot. In replica context
                # `.handle` is this replica's copy; every replica applies the same update.
                tf.raw_ops.ResourceApplyMomentum(
                    var=v.handle, accum=slot.handle, lr=tf.cast(learning_rate, v.dtype),
                    grad=g, momentum=tf.constant(self.momentum, v.dtype))
            else:
                ms = self.mean_squares[i]
                new_ms = self.rho * ms + (1.0 - self.rho) * tf.square(g)
                ms.assign(new_ms)
                new_slot = self.momentum * slot + learning_rate * g / tf.sqrt(new_ms + self.epsilon)
                slot.assign(new_slot)
                v.assign_sub(new_slot)
