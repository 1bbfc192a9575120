"""FusedOptimizer (one fused ResourceApply* kernel per variable) against Keras 3's optimisers on a
small quadratic, and its state through tf.train.Checkpoint.

Conventions, checked here rather than papered over:

* Adam, SGD, RMSprop (``momentum=0``): the same update rules and epsilon placement as Keras
  (Adam: ``m_hat / (sqrt(v_hat) + eps_hat)`` with Keras' "epsilon hat"; RMSprop: ``sqrt(ms + eps)``).
* momentum: TF's ``accum = mu * accum + g; var -= lr * accum`` vs Keras' ``m = mu * m - lr * g;
  var += m`` -- identical while the learning rate is constant (only the place of ``lr`` differs,
  which matters when the learning rate changes between steps; see the last test).
* Adagrad: TF's ``AdagradV2`` divides by ``sqrt(accum) + eps``, Keras by ``sqrt(accum + eps)``. With
  the same initial accumulator (0.1) and eps = 1e-7 the relative difference is < eps / sqrt(0.1),
  far inside the tolerance.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

from uhved_tf.errors import ConfigError
from uhved_tf.training.optimizer import SUPPORTED, FusedOptimizer

pytestmark = pytest.mark.filterwarnings("error")  # warnings as errors

LR = 0.05
STEPS = 6

KERAS = {
    "adam": lambda: keras.optimizers.Adam(LR, beta_1=0.9, beta_2=0.999, epsilon=1e-7),
    "sgd": lambda: keras.optimizers.SGD(LR, momentum=0.0),
    "momentum": lambda: keras.optimizers.SGD(LR, momentum=0.9),
    "rmsprop": lambda: keras.optimizers.RMSprop(LR, rho=0.9, momentum=0.0, epsilon=1e-7),
    "adagrad": lambda: keras.optimizers.Adagrad(LR, initial_accumulator_value=0.1, epsilon=1e-7),
}


def problem():
    """A separable quadratic 0.5 * sum(a * (x - b)^2) over a vector and a matrix."""
    rng = np.random.default_rng(42)
    init = [rng.uniform(1, 3, 5).astype(np.float32), rng.uniform(-3, -1, (3, 4)).astype(np.float32)]
    a = [rng.uniform(0.5, 4, x.shape).astype(np.float32) for x in init]
    b = [rng.uniform(-1, 1, x.shape).astype(np.float32) for x in init]
    return init, a, b


def grads_of(variables, a, b):
    with tf.GradientTape() as tape:
        loss = tf.add_n([0.5 * tf.reduce_sum(ai * (v - bi) ** 2) for v, ai, bi in zip(variables, a, b)])
    return tape.gradient(loss, variables)


def run_fused(kind, steps=STEPS, lr_schedule=None):
    init, a, b = problem()
    variables = [tf.Variable(x) for x in init]
    opt = FusedOptimizer(kind, LR, variables)
    trajectory = []
    for step in range(steps):
        if lr_schedule:
            opt.learning_rate.assign(lr_schedule(step))
        opt.apply_gradients(zip(grads_of(variables, a, b), variables))
        trajectory.append([v.numpy().copy() for v in variables])
    return opt, variables, trajectory


def run_keras(kind, steps=STEPS, lr_schedule=None):
    init, a, b = problem()
    variables = [keras.Variable(x) for x in init]
    opt = KERAS[kind]()
    trajectory = []
    for step in range(steps):
        if lr_schedule:
            opt.learning_rate = lr_schedule(step)
        opt.apply_gradients(zip(grads_of([v.value for v in variables], a, b), variables))
        trajectory.append([np.array(v.numpy()) for v in variables])
    return trajectory


@pytest.mark.parametrize("kind", SUPPORTED)
def test_matches_keras_optimizer(kind):
    _, _, fused = run_fused(kind)
    reference = run_keras(kind)
    for step, (ours, theirs) in enumerate(zip(fused, reference)):
        for x, y in zip(ours, theirs):
            np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-7, err_msg=f"{kind}, step {step + 1}")
    # And it actually optimised something.
    init, _, _ = problem()
    assert not np.allclose(fused[-1][0], init[0])


@pytest.mark.parametrize("kind", SUPPORTED)
def test_same_in_tf_function(kind):
    init, a, b = problem()
    variables = [tf.Variable(x) for x in init]
    opt = FusedOptimizer(kind, LR, variables)

    @tf.function
    def step():
        return opt.apply_gradients(zip(grads_of(variables, a, b), variables))

    for _ in range(STEPS):
        step()
    _, eager_vars, _ = run_fused(kind)
    for x, y in zip(variables, eager_vars):
        np.testing.assert_allclose(x.numpy(), y.numpy(), rtol=1e-6)
    assert int(opt.iterations.numpy()) == STEPS


@pytest.mark.parametrize("kind", SUPPORTED)
def test_state_round_trips_through_checkpoint(kind, tmp_path):
    opt, variables, _ = run_fused(kind, steps=3)
    opt.learning_rate.assign(0.0125)
    path = tf.train.Checkpoint(optimizer=opt, variables=variables).write(str(tmp_path / "ckpt"))

    init, a, b = problem()
    fresh_vars = [tf.Variable(np.zeros_like(x)) for x in init]
    fresh = FusedOptimizer(kind, LR, fresh_vars)
    tf.train.Checkpoint(optimizer=fresh, variables=fresh_vars).read(path).assert_consumed()
    assert int(fresh.iterations.numpy()) == 3
    assert float(fresh.learning_rate.numpy()) == pytest.approx(0.0125)
    for ours, theirs in zip(sum(opt.slots, []), sum(fresh.slots, [])):
        np.testing.assert_array_equal(ours.numpy(), theirs.numpy())

    # Resuming gives exactly the trajectory of the uninterrupted run.
    for _ in range(2):
        opt.apply_gradients(zip(grads_of(variables, a, b), variables))
        fresh.apply_gradients(zip(grads_of(fresh_vars, a, b), fresh_vars))
    for x, y in zip(variables, fresh_vars):
        np.testing.assert_array_equal(x.numpy(), y.numpy())


def test_slots_per_kind():
    init, _, _ = problem()
    variables = [tf.Variable(x) for x in init]
    expected = {"adam": 2, "sgd": 0, "momentum": 1, "rmsprop": 2, "adagrad": 1}
    for kind in SUPPORTED:
        opt = FusedOptimizer(kind, LR, variables)
        assert len(opt.slots) == expected[kind]
        for slots in opt.slots:
            assert [s.shape for s in slots] == [v.shape for v in variables]


def test_none_gradients_are_skipped():
    init, a, b = problem()
    variables = [tf.Variable(x) for x in init]
    opt = FusedOptimizer("adam", LR, variables)
    g = grads_of(variables, a, b)
    opt.apply_gradients([(g[0], variables[0]), (None, variables[1])])
    assert not np.allclose(variables[0].numpy(), init[0])
    np.testing.assert_array_equal(variables[1].numpy(), init[1])
    assert int(opt.iterations.numpy()) == 1


def test_unknown_optimiser_is_a_config_error():
    with pytest.raises(ConfigError, match="adam"):
        FusedOptimizer("adamw", LR, [tf.Variable(1.0)])


def test_momentum_with_changing_learning_rate_follows_tf_convention():
    """Documented difference: with a learning rate that changes between steps, TF's momentum
    (``var -= lr_t * accum``) and Keras' (``m = mu * m - lr_t * g``) diverge. This is TF1's
    MomentumOptimizer, which NiftyNet (the original U-HVED) used."""
    schedule = lambda step: LR / 4 ** (step // 2)  # noqa: E731
    _, _, fused = run_fused("momentum", lr_schedule=schedule)
    init, a, b = problem()
    x, accum = [v.astype(np.float64) for v in init], [np.zeros(v.shape) for v in init]
    for step in range(STEPS):
        for i in range(len(x)):
            accum[i] = 0.9 * accum[i] + a[i] * (x[i] - b[i])
            x[i] = x[i] - schedule(step) * accum[i]
    for ours, ref in zip(fused[-1], x):
        np.testing.assert_allclose(ours, ref, rtol=1e-5)
    keras_traj = run_keras("momentum", lr_schedule=schedule)
    assert not np.allclose(fused[-1][0], keras_traj[-1][0], rtol=1e-5)


def test_the_config_offers_exactly_the_optimisers_built_here():
    from uhved_tf.config.schema import KEYS_BY_SECTION
    assert KEYS_BY_SECTION["TRAINING"]["optimiser"].kind.options == SUPPORTED
