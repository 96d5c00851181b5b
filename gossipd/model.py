"""The model: a one-hidden-layer MLP whose parameters live in ONE flat float32 vector.

Gossip averaging works on flat vectors (the wire carries one tensor, mixing is
plain vector arithmetic), so the model is written directly against a flat vector
with a fixed, documented layout instead of a pytree:

    [ W1 (in*hidden, row-major [in, hidden]) | b1 (hidden) | W2 (hidden*out) | b2 (out) ]

Two nodes can average parameters only if their layouts are identical; the
:attr:`MLPSpec.fingerprint` names the layout and is compared during the handshake.
All functions here are pure and jit-friendly (shapes depend only on the spec).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

INPUT_DIM = 64  # 8x8 digit images, flattened
NUM_CLASSES = 10


class MLPSpec(NamedTuple):
    """Static shape of the MLP; hashable, so it can be a closure constant under jit."""

    in_dim: int = INPUT_DIM
    hidden: int = 64
    out_dim: int = NUM_CLASSES

    @property
    def num_params(self) -> int:
        return self.in_dim * self.hidden + self.hidden + self.hidden * self.out_dim + self.out_dim

    @property
    def fingerprint(self) -> str:
        return f"mlp-{self.in_dim}-{self.hidden}-{self.out_dim}"


class MLPParams(NamedTuple):
    w1: jax.Array
    b1: jax.Array
    w2: jax.Array
    b2: jax.Array


def layout(spec: MLPSpec) -> dict[str, tuple[int, tuple[int, ...]]]:
    """Name -> (offset, shape) of every tensor in the flat vector, in order."""
    shapes = {"w1": (spec.in_dim, spec.hidden), "b1": (spec.hidden,),
              "w2": (spec.hidden, spec.out_dim), "b2": (spec.out_dim,)}
    out: dict[str, tuple[int, tuple[int, ...]]] = {}
    offset = 0
    for name, shape in shapes.items():
        out[name] = (offset, shape)
        offset += int(np.prod(shape))
    return out


def unflatten(spec: MLPSpec, flat: jax.Array) -> MLPParams:
    """Views of the flat vector as weight matrices (static slices, so jit-cheap)."""
    if flat.shape != (spec.num_params,):
        raise ValueError(f"expected {spec.num_params} params for {spec.fingerprint}, "
                         f"got shape {flat.shape}")
    i, h, o = spec.in_dim, spec.hidden, spec.out_dim
    a = i * h
    b = a + h
    c = b + h * o
    return MLPParams(
        w1=flat[:a].reshape(i, h),
        b1=flat[a:b],
        w2=flat[b:c].reshape(h, o),
        b2=flat[c:],
    )


def flatten(p: MLPParams) -> jax.Array:
    return jnp.concatenate([p.w1.ravel(), p.b1, p.w2.ravel(), p.b2]).astype(jnp.float32)


def init_params(spec: MLPSpec, key: jax.Array) -> jax.Array:
    """He-normal weights (ReLU hidden layer), zero biases, as one flat float32 vector.

    Depends only on ``key``: every node of a swarm derives it from the swarm seed,
    so all nodes start from the same point (averaging then starts at consensus).
    """
    k1, k2 = jax.random.split(key)
    w1 = jax.random.normal(k1, (spec.in_dim, spec.hidden)) * jnp.sqrt(2.0 / spec.in_dim)
    w2 = jax.random.normal(k2, (spec.hidden, spec.out_dim)) * jnp.sqrt(2.0 / spec.hidden)
    return flatten(
        MLPParams(w1=w1, b1=jnp.zeros(spec.hidden), w2=w2, b2=jnp.zeros(spec.out_dim))
    )


def logits(spec: MLPSpec, flat: jax.Array, x: jax.Array) -> jax.Array:
    p = unflatten(spec, flat)
    hidden = jax.nn.relu(x @ p.w1 + p.b1)
    return hidden @ p.w2 + p.b2


def cross_entropy(spec: MLPSpec, flat: jax.Array, x: jax.Array, y: jax.Array) -> jax.Array:
    """Mean softmax cross-entropy of integer labels ``y`` (L2 is applied by the optimizer)."""
    z = logits(spec, flat, x)
    logp = jax.nn.log_softmax(z)
    return -jnp.mean(jnp.take_along_axis(logp, y[:, None], axis=1))


def accuracy(spec: MLPSpec, flat: jax.Array, x: jax.Array, y: jax.Array) -> jax.Array:
    return jnp.mean((jnp.argmax(logits(spec, flat, x), axis=1) == y).astype(jnp.float32))
