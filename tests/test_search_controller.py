"""Controller (REINFORCE, EMA baseline, Adam beta1=0, RL delay) and reward formula tests."""
import itertools

import numpy as np
import pytest
import tensorflow as tf

from search import reward as reward_lib
from search.controller import Controller

SIZES = [3, 4, 2, 3]


def test_reward_numbers():
    # Paper normalisers (SPEC 3) and Multi-MAX's Table 1 latencies.
    c = [36.83, 12.97, 4.78, 3.06, 2.38]
    lat = [25.2, 11.7, 4.47, 3.38, 2.22]
    f_max = max(l / n for l, n in zip(lat, c))
    f_avg = np.mean([l / n for l, n in zip(lat, c)])
    assert f_max == pytest.approx(1.105, abs=5e-4)
    assert f_avg == pytest.approx(0.912, abs=5e-4)
    r = reward_lib.reward(0.749, lat, c, metric="max", beta=-0.07, target=1.0)
    assert r == pytest.approx(0.749 - 0.07 * abs(f_max - 1.0))
    r = reward_lib.reward(0.749, lat, c, metric="avg", beta=-0.07, target=1.0)
    assert r == pytest.approx(0.749 - 0.07 * abs(f_avg - 1.0))
    # target scales f; single = one hardware.
    assert reward_lib.reward(0.5, [20.0], [10.0], "single", beta=-0.1, target=2.0) == \
        pytest.approx(0.5)
    assert reward_lib.reward(0.5, [30.0], [10.0], "single", beta=-0.1, target=1.0) == \
        pytest.approx(0.5 - 0.2)
    # TF path gives the same numbers (float32) and works inside tf.function.
    fn = tf.function(lambda a, l: reward_lib.reward(a, l, c, "max", -0.07, 1.0))
    got = fn(tf.constant(0.749), tf.constant(lat, tf.float32))
    assert float(got) == pytest.approx(0.749 - 0.07 * abs(f_max - 1.0), abs=1e-6)


def test_reward_rejects_bad_arguments():
    with pytest.raises(ValueError, match="single"):
        reward_lib.reward(0.5, [1.0, 2.0], [1.0, 1.0], metric="single")
    with pytest.raises(ValueError, match="metric"):
        reward_lib.reward(0.5, [1.0], [1.0], metric="mean")
    with pytest.raises(ValueError, match="beta"):
        reward_lib.reward(0.5, [1.0], [1.0], metric="max", beta=0.1)


def test_sampling_is_reproducible_and_uniform_at_start():
    ctrl = Controller(SIZES)
    a = ctrl.sample([1, 2]).numpy()
    assert np.array_equal(a, ctrl.sample([1, 2]).numpy())
    draws = np.stack([ctrl.sample([7, i]).numpy() for i in range(600)])
    assert draws.shape == (600, 4)
    for d, n in enumerate(SIZES):
        counts = np.bincount(draws[:, d], minlength=n)
        assert counts.size == n and counts.min() > 600 / n * 0.7  # every choice, ~uniform
    # log p and entropy of the uniform distribution
    assert float(ctrl.log_prob(a)) == pytest.approx(-np.log(np.prod(SIZES)), abs=1e-5)
    assert float(ctrl.entropy()) == pytest.approx(np.log(np.prod(SIZES)), abs=1e-5)


def _synthetic_problem():
    """Accuracy + latency per hardware as functions of the choices; optimum by brute force."""
    rng = np.random.default_rng(3)
    acc_table = [rng.uniform(0.0, 0.3, n) for n in SIZES]
    lat_tables = [[rng.uniform(0.5, 3.0, n) for n in SIZES] for _ in range(2)]
    normalizers = [4.0, 6.0]

    def accuracy(c):
        return sum(t[i] for t, i in zip(acc_table, c))

    def latencies(c):
        return [sum(t[i] for t, i in zip(tabs, c)) for tabs in lat_tables]

    best, best_r = None, -np.inf
    for c in itertools.product(*[range(n) for n in SIZES]):
        r = reward_lib.reward(accuracy(c), latencies(c), normalizers, "max", beta=-0.5)
        if r > best_r:
            best, best_r = c, r
    pad = max(SIZES)

    def table(t):
        out = np.zeros([len(SIZES), pad], np.float32)
        for i, row in enumerate(t):
            out[i, :len(row)] = row
        return tf.constant(out)

    tf_acc = table(acc_table)
    tf_lat = [table(t) for t in lat_tables]

    def gather_sum(tab, c):
        return tf.reduce_sum(tf.gather(tab, c[:, None], axis=1, batch_dims=1))

    def tf_reward(c):
        lat = tf.stack([gather_sum(t, c) for t in tf_lat])
        return reward_lib.reward(gather_sum(tf_acc, c), lat, normalizers, "max", beta=-0.5)

    return np.array(best), tf_reward


def test_controller_converges_to_known_optimum():
    best, tf_reward = _synthetic_problem()
    ctrl = Controller(SIZES, learning_rate=0.1, rl_delay_steps=20)

    @tf.function
    def step(i):
        c = ctrl.sample(tf.stack([tf.constant(0, tf.int64), i]))
        return ctrl.update(c, tf_reward(c), i)

    first_logits = None
    for i in range(600):
        out = step(tf.constant(i, tf.int64))
        if i == 19:  # RL delay: learning rate 0, logits untouched; baseline still tracks
            first_logits = [v.numpy().copy() for v in ctrl.logits]
            assert float(out["rl_learning_rate"]) == 0.0
    assert all(np.all(l == 0) for l in first_logits)
    assert np.array_equal(ctrl.argmax(), best), (ctrl.argmax(), best)
    probs = ctrl.probabilities().numpy()
    assert all(probs[d, best[d]] > 0.8 for d in range(len(SIZES)))


def test_baseline_is_ema_of_mean_reward():
    ctrl = Controller([2, 2], learning_rate=0.0)
    rewards = [1.0, 0.0, 0.5, 0.25]
    b = None
    for i, r in enumerate(rewards):
        out = ctrl.update(tf.constant([0, 1]), tf.constant(r), tf.constant(i, tf.int64))
        expected_used = r if b is None else b
        assert float(out["baseline"]) == pytest.approx(expected_used)
        assert float(out["advantage"]) == pytest.approx(r - expected_used)
        b = r if b is None else b
        b = 0.95 * b + 0.05 * r
        assert float(ctrl.baseline.numpy()) == pytest.approx(b)


def test_reinforce_gradient_direction():
    """A positive advantage raises the probability of the sampled choices (and only theirs)."""
    ctrl = Controller([3, 3], learning_rate=0.1)
    ctrl.update(tf.constant([0, 0]), tf.constant(0.0), tf.constant(0, tf.int64))  # seeds b
    ctrl.update(tf.constant([2, 1]), tf.constant(1.0), tf.constant(1, tf.int64))
    probs = ctrl.probabilities().numpy()
    assert probs[0].argmax() == 2 and probs[1].argmax() == 1
