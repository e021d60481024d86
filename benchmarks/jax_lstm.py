"""An LSTM in JAX trained like spiralctl trains, on the same files: the benchmark's second peer.

Usage: python benchmarks/jax_lstm.py DATA_DIR --hidden H --batch-size B --epochs E --lr LR
Prints one JSON object with per-epoch training seconds (the loop and the output: peer.py).

The model is torch_lstm.py's, written out: one LSTM layer (gates i, f, g, o, PyTorch's
uniform +-1/sqrt(H) initialisation of every weight and bias) as a `jax.lax.scan` over time,
a linear head on the last hidden state, the masked mean of BCE-with-logits, and Adam with
PyTorch's defaults (optax). One training step is one `jax.jit`-ted function; each epoch's
clock stops only when its last step's results are ready (JAX dispatches asynchronously).
Runs on the CPU unless JAX_PLATFORMS says otherwise.
"""

from __future__ import annotations

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")  # before jax is imported: the CPU is what is compared

import argparse  # noqa: E402
import math  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
import peer  # noqa: E402

from spiralctl.data import Dataset  # noqa: E402


def init_params(key: jax.Array, inputs: int, hidden: int) -> dict:
    """nn.LSTM(inputs, hidden) and nn.Linear(hidden, 1) as PyTorch initialises them."""
    bound = 1 / math.sqrt(hidden)  # nn.LSTM: every tensor; nn.Linear: 1/sqrt(fan_in), fan_in = H
    shapes = {
        "w_ih": (4 * hidden, inputs),
        "w_hh": (4 * hidden, hidden),
        "b_ih": (4 * hidden,),
        "b_hh": (4 * hidden,),
        "head_w": (1, hidden),
        "head_b": (1,),
    }
    keys = jax.random.split(key, len(shapes))
    return {
        name: jax.random.uniform(k, shape, jnp.float32, -bound, bound)
        for k, (name, shape) in zip(keys, shapes.items())
    }


def logits(params: dict, x: jax.Array) -> jax.Array:
    """x: [B, T, inputs] -> one logit per sequence, from the last time step's hidden state."""
    batch, hidden = x.shape[0], params["w_hh"].shape[1]
    projected = jnp.einsum("bti,gi->tbg", x, params["w_ih"]) + params["b_ih"] + params["b_hh"]

    def step(carry, xw):
        h, c = carry
        gates = xw + h @ params["w_hh"].T
        i, f, g, o = jnp.split(gates, 4, axis=-1)
        c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
        h = jax.nn.sigmoid(o) * jnp.tanh(c)
        return (h, c), None

    zeros = jnp.zeros((batch, hidden), jnp.float32)
    (h, _), _ = jax.lax.scan(step, (zeros, zeros), projected)
    return (h @ params["head_w"].T + params["head_b"]).reshape(-1)


def masked_loss(params: dict, x: jax.Array, y: jax.Array, mask: jax.Array) -> jax.Array:
    """The mean BCE-with-logits over the batch's real rows (mask 1)."""
    return (optax.sigmoid_binary_cross_entropy(logits(params, x), y) * mask).sum() / mask.sum()


def build(args: argparse.Namespace, train: Dataset) -> peer.Model:
    x, y = train.x, train.y.astype(np.float32)
    optimizer = optax.adam(args.lr, b1=0.9, b2=0.999, eps=1e-8)  # torch.optim.Adam's defaults
    params = init_params(jax.random.PRNGKey(args.seed), x.shape[2], args.hidden)
    state = {"params": params, "opt": optimizer.init(params)}

    @jax.jit
    def train_step(params, opt_state, xb, yb, mask):
        loss, grads = jax.value_and_grad(masked_loss)(params, xb, yb, mask)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    def step(index: np.ndarray, mask: np.ndarray) -> jax.Array:
        params, opt_state, loss = train_step(state["params"], state["opt"], x[index], y[index], mask)
        state.update(params=params, opt=opt_state)
        return loss

    def predict(xs: np.ndarray) -> np.ndarray:
        return np.asarray(jax.jit(logits)(state["params"], xs)) > 0

    return peer.Model(step, predict, wait=lambda: jax.block_until_ready(state))


if __name__ == "__main__":
    peer.run(build)
