"""Optimisers as one fused kernel per variable.

Keras 3's optimisers build ~30 graph ops per variable inside a ``tf.function``; with U-HVED's
~270 variables that is most of the training graph and a large part of its trace and graph
optimisation time. These use TensorFlow's fused ``ResourceApply*`` kernels instead (one op per
variable; the same update rules as Keras/TF), keep their slots in ``tf.Variable``s tracked by
``tf.train.Checkpoint`` and read the learning rate from a variable the training loop sets.
"""

from __future__ import annotations

import tensorflow as tf

from uhved_tf.config.schema import OPTIMISERS
from uhved_tf.errors import ConfigError

#: The schema's [TRAINING] optimiser choices are exactly these (the config check refuses others).
SUPPORTED = OPTIMISERS


class FusedOptimizer(tf.Module):
    def __init__(self, name: str, learning_rate: float, variables, beta_1=0.9, beta_2=0.999,
                 epsilon=1e-7, momentum=0.9, rho=0.9):
        super().__init__(name=f"optimizer_{name}")
        if name not in SUPPORTED:
            raise ConfigError(f'[TRAINING] optimiser = "{name}": expected one of {", ".join(SUPPORTED)}')
        self.kind = name
        # Written from replica context under tf.distribute: every replica computes the same value.
        first = tf.VariableAggregation.ONLY_FIRST_REPLICA
        self.learning_rate = tf.Variable(float(learning_rate), trainable=False, dtype=tf.float32, name="lr",
                                         aggregation=first)
        self.iterations = tf.Variable(0, trainable=False, dtype=tf.int64, name="iterations", aggregation=first)
        self.beta_1, self.beta_2, self.epsilon = beta_1, beta_2, epsilon
        self.momentum, self.rho = momentum, rho
        # The tf.Variables behind Keras Variables (their handles feed the fused kernels).
        self._variables = [v if isinstance(v, tf.Variable) else v.value for v in variables]
        n_slots = {"adam": 2, "sgd": 0, "momentum": 1, "rmsprop": 2, "adagrad": 1}[name]
        init = {"adagrad": 0.1}.get(name, 0.0)
        self.slots = [
            [tf.Variable(tf.fill(v.shape, tf.cast(init, v.dtype)), trainable=False, name=f"slot{s}_{i}")
             for i, v in enumerate(self._variables)]
            for s in range(n_slots)
        ]

    def apply_gradients(self, grads_and_vars, apply_if=None):
        """One update; with ``apply_if`` (a boolean tensor, the same on every replica) a False
        skips it entirely: the weights, the slots and the step counter stay as they are."""
        grads = [g for g, _ in grads_and_vars]
        if apply_if is None:
            return self._apply(grads, self.iterations.assign_add(1))
        # The counter outside the branch: a replica-context update of a distributed variable
        # (a merge_call) is not allowed inside tf.cond; the kernels below only touch local copies.
        step = self.iterations.assign_add(tf.cast(apply_if, tf.int64))
        return tf.cond(apply_if, lambda: self._apply(grads, step), lambda: tf.identity(step))

    def _apply(self, grads, step):
        lr = tf.identity(self.learning_rate)
        ops = []
        if self.kind == "adam":
            t = tf.cast(step, tf.float32)
            b1p, b2p = tf.pow(self.beta_1, t), tf.pow(self.beta_2, t)
            for i, (g, v) in enumerate(zip(grads, self._variables)):
                if g is None:
                    continue
                ops.append(tf.raw_ops.ResourceApplyAdam(
                    var=v.handle, m=self.slots[0][i].handle, v=self.slots[1][i].handle,
                    beta1_power=b1p, beta2_power=b2p, lr=lr, beta1=self.beta_1, beta2=self.beta_2,
                    epsilon=self.epsilon, grad=g, use_locking=False))
        elif self.kind == "sgd":
            for g, v in zip(grads, self._variables):
                if g is not None:
                    ops.append(tf.raw_ops.ResourceApplyGradientDescent(var=v.handle, alpha=lr, delta=g))
        elif self.kind == "momentum":
            for i, (g, v) in enumerate(zip(grads, self._variables)):
                if g is not None:
                    ops.append(tf.raw_ops.ResourceApplyMomentum(
                        var=v.handle, accum=self.slots[0][i].handle, lr=lr, grad=g,
                        momentum=self.momentum))
        elif self.kind == "rmsprop":
            for i, (g, v) in enumerate(zip(grads, self._variables)):
                if g is not None:
                    ops.append(tf.raw_ops.ResourceApplyRMSProp(
                        var=v.handle, ms=self.slots[0][i].handle, mom=self.slots[1][i].handle,
                        lr=lr, rho=self.rho, momentum=0.0, epsilon=self.epsilon, grad=g))
        elif self.kind == "adagrad":
            for i, (g, v) in enumerate(zip(grads, self._variables)):
                if g is not None:
                    ops.append(tf.raw_ops.ResourceApplyAdagradV2(
                        var=v.handle, accum=self.slots[0][i].handle, lr=lr, epsilon=self.epsilon, grad=g))
        with tf.control_dependencies(ops):
            return tf.identity(step)
