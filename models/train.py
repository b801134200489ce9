"""Training zoo models with optax: one jit-compiled step, minibatches, progress per epoch.

    net = jxai.models.get("mnist1d_cnn", pretrained=False, key=0)
    data = jxai.models.data.mnist1d()
    net, history = fit(net, data.x_train, data.y_train, loss="cross_entropy", epochs=30,
                       x_test=data.x_test, y_test=data.y_test)

Losses are computed on the network's pre-activation output (``without_output_activation()``),
which is numerically stable: softmax cross-entropy from logits, sigmoid cross-entropy from
logits, mean squared error on a linear output, and the U-Net seed's BCE + Dice.
Dropout is active during training (``train=True`` with a ``dropout`` RNG), off at evaluation.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jxai.network import Network

from .unet import bce_dice_loss, dice_coefficient

__all__ = ["LOSSES", "History", "evaluate", "fit", "predict"]


def _cross_entropy(logits, y):
    return optax.softmax_cross_entropy_with_integer_labels(logits, y.astype(jnp.int32)).mean()


def _binary_cross_entropy(logits, y):
    logits = logits.reshape(y.shape)
    return optax.sigmoid_binary_cross_entropy(logits, y.astype(logits.dtype)).mean()


def _mse(out, y):
    return jnp.mean((out.reshape(y.shape) - y) ** 2)


def _accuracy(logits, y):
    return jnp.mean(jnp.argmax(logits, axis=-1) == y)


def _binary_accuracy(logits, y):
    return jnp.mean((logits.reshape(y.shape) > 0) == (y > 0.5))


def _rmse(out, y):
    return jnp.sqrt(_mse(out, y))


def _dice(logits, y):
    return dice_coefficient(y, jax.nn.sigmoid(logits.reshape(y.shape)) > 0.5)


# name -> (loss(pre_activation, y), metric name, metric(pre_activation, y) summed per batch)
LOSSES: dict[str, tuple[Callable, str, Callable]] = {
    "cross_entropy": (_cross_entropy, "accuracy", _accuracy),
    "binary_cross_entropy": (_binary_cross_entropy, "accuracy", _binary_accuracy),
    "mse": (_mse, "rmse", _rmse),
    "bce_dice": (lambda out, y: bce_dice_loss(y, out.reshape(y.shape)), "dice", _dice),
}


@dataclass
class History:
    """Per-epoch records: ``loss`` (train), the metric on train and test, seconds."""

    loss: str
    metric: str
    epochs: list[dict[str, float]] = field(default_factory=list)

    @property
    def final(self) -> dict[str, float]:
        return self.epochs[-1] if self.epochs else {}


def _loss_spec(loss: str):
    try:
        return LOSSES[loss]
    except KeyError:
        raise ValueError(f"unknown loss {loss!r}; known: {', '.join(LOSSES)}") from None


def _check_trainable(network: Network):
    extra = sorted(set(network.variables) - {"params"})
    if extra:
        raise ValueError(
            f"{network!r} has variable collections {extra} besides 'params' (BatchNorm "
            "statistics?); jxai.models.train only trains parameter-only models such as the zoo's."
        )


def _pre_activation(network: Network) -> Network:
    return network.without_output_activation()


def _make_apply(network: Network):
    logits_net = _pre_activation(network)

    def apply(params, x, train: bool, rng):
        net = Network(logits_net.module, {"params": params}, logits_net.metadata, logits_net.skip)
        return net.apply(x, train=train, rngs={"dropout": rng} if train else None)

    return apply


def predict(network: Network, x, *, batch_size: int = 256, pre_activation: bool = False):
    """The network's output on ``x`` in fixed-size jitted batches (one compilation), as NumPy."""
    net = _pre_activation(network) if pre_activation else network
    fn = jax.jit(lambda v, xb: Network(net.module, v, net.metadata, net.skip).apply(xb))
    x = np.asarray(x, np.float32)
    n = len(x)
    batch = min(batch_size, n)
    outs = []
    for start in range(0, n, batch):
        xb = x[start:start + batch]
        pad = batch - len(xb)
        if pad:
            xb = np.concatenate([xb, np.zeros((pad, *xb.shape[1:]), xb.dtype)])
        outs.append(np.asarray(fn(net.variables, xb))[: batch - pad])
    return np.concatenate(outs)


def evaluate(network: Network, x, y, *, loss: str = "cross_entropy",
             batch_size: int = 256) -> dict[str, float]:
    """Loss and metric (accuracy, rmse or dice) of ``network`` on ``(x, y)``."""
    loss_fn, metric_name, metric_fn = _loss_spec(loss)
    out = jnp.asarray(predict(network, x, batch_size=batch_size, pre_activation=True))
    y = jnp.asarray(y)
    return {"loss": float(loss_fn(out, y)), metric_name: float(metric_fn(out, y))}


def fit(
    network: Network,
    x,
    y,
    *,
    loss: str = "cross_entropy",
    epochs: int = 10,
    batch_size: int = 64,
    learning_rate: float = 1e-3,
    optimizer: optax.GradientTransformation | None = None,
    key: jax.Array | int = 0,
    x_test=None,
    y_test=None,
    log: Callable[[str], Any] | None = print,
) -> tuple[Network, History]:
    """Train ``network`` on ``(x, y)`` with optax (Adam by default) and return the trained copy.

    Args:
      network: a zoo `Network` (parameters only; ``__call__(x, train)``).
      x, y: training inputs (N, ...) and targets (N,) or (N, ...).
      loss: a key of `LOSSES`.
      epochs, batch_size, learning_rate: the usual; the last incomplete batch of an epoch is
        dropped (the data is reshuffled every epoch).
      optimizer: an optax transformation (default ``optax.adam(learning_rate)``).
      key: PRNG key or int seed for shuffling and dropout.
      x_test, y_test: optional held-out data, evaluated after every epoch.
      log: called with one progress line per epoch (None: silent).

    Returns:
      ``(trained_network, history)``; the input network is not modified.
    """
    _check_trainable(network)
    loss_fn, metric_name, metric_fn = _loss_spec(loss)
    x = np.asarray(x, np.float32)
    y = np.asarray(y)
    if len(x) != len(y):
        raise ValueError(f"x and y differ in length: {len(x)} inputs, {len(y)} targets")
    if isinstance(key, int):
        key = jax.random.key(key)
    batch_size = min(batch_size, len(x))
    steps = len(x) // batch_size
    apply = _make_apply(network)
    tx = optimizer or optax.adam(learning_rate)
    params = network.variables["params"]
    opt_state = tx.init(params)

    def objective(params, xb, yb, rng):
        out = apply(params, xb, True, rng)
        return loss_fn(out, yb), out

    @jax.jit
    def step(params, opt_state, xb, yb, rng):
        (value, out), grads = jax.value_and_grad(objective, has_aux=True)(params, xb, yb, rng)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, value, metric_fn(out, yb)

    history = History(loss, metric_name)
    shuffle_seed = int(jax.random.randint(key, (), 0, 2**31 - 1))
    rng = np.random.default_rng(shuffle_seed)
    for epoch in range(1, epochs + 1):
        start = time.perf_counter()
        order = rng.permutation(len(x))
        losses, metrics = [], []
        for i in range(steps):
            idx = order[i * batch_size:(i + 1) * batch_size]
            key, sub = jax.random.split(key)
            params, opt_state, value, metric = step(params, opt_state, x[idx], y[idx], sub)
            losses.append(value)
            metrics.append(metric)
        record = {
            "epoch": epoch,
            "loss": float(np.mean(jax.device_get(losses))),
            f"train_{metric_name}": float(np.mean(jax.device_get(metrics))),
        }
        trained = Network(network.module, {**network.variables, "params": params},
                          network.metadata, network.skip)
        if x_test is not None:
            scores = evaluate(trained, x_test, y_test, loss=loss)
            record["test_loss"] = scores["loss"]
            record[f"test_{metric_name}"] = scores[metric_name]
        record["seconds"] = time.perf_counter() - start
        history.epochs.append(record)
        if log is not None:
            log(_format(record, epochs, metric_name))
            if log is print:
                sys.stdout.flush()
    trained = Network(network.module, {**network.variables, "params": params},
                      network.metadata, network.skip)
    return trained, history


def _format(record: dict[str, float], epochs: int, metric: str) -> str:
    width = len(str(epochs))
    text = (f"epoch {record['epoch']:>{width}}/{epochs}  loss {record['loss']:.4f}  "
            f"{metric} {record[f'train_{metric}']:.3f}")
    if f"test_{metric}" in record:
        text += f"  test {metric} {record[f'test_{metric}']:.3f}"
    return text + f"  ({record['seconds']:.1f} s)"
