"""Outer optimizer for local-SGD-style gossip (DiLoCo / NoLoCo), pure numpy on flat vectors.

The scheme (DiLoCo, Douillard et al. 2023; NoLoCo, Kolehmainen et al. 2025, which drops the
all-reduce and averages with one random peer instead):

1. A node starts a cycle at its *anchor* parameters ``theta`` and runs ``H`` steps of its own
   inner optimizer (gossipd.trainer: SGD with momentum on its private shard), ending at ``C``.
2. It exchanges with ONE uniformly random peer. The "averaged" point is the pair average of the
   two nodes' current parameters, computed with the ordinary exchange merge
   (``gossipd.mixing.merge``: ``C + w * (R - S)``, with the dequantized vectors when the payload is
   compressed), so the pair's mean is conserved exactly as in plain gossip.
3. The outer step treats ``delta = theta - averaged`` as a pseudo-gradient and applies Nesterov
   momentum to it::

       m     = mu * m + delta
       theta = theta - lr * (delta + mu * m)

   ``theta`` is both the node's new parameters (the start of the next ``H`` inner steps) and its
   new anchor.

Why: exchanging only every ``H`` steps divides the communication by ``H`` compared with gossip
every step, and the pseudo-gradient of ``H`` steps is a much less noisy direction than one
minibatch gradient. Averaging it with a peer before the outer step removes part of the drift
each node picked up on its skewed shard, and the outer momentum carries the swarm's consensus
direction across cycles, which is what lets ``H`` grow without the accuracy falling off (DiLoCo
reports outer Nesterov with ``lr = 0.7, mu = 0.9`` as the best setting). With ``lr = 1, mu = 0``
the rule is exactly "take the averaged point", i.e. plain periodic gossip averaging.

The state is an immutable NamedTuple in the optax init/update style: ``outer_update`` returns
a new state and never mutates its inputs. Only the parameters are ever sent; the anchor and the
outer momentum stay on the node, like the inner optimizer state.

Inputs are validated like gossipd.mixing: a vector of the wrong shape is a peer with another
model, and a NaN or inf would spread through every later exchange, so both raise ValueError.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from gossipd.mixing import as_vector


class OuterState(NamedTuple):
    anchor: np.ndarray  # parameters at the start of the current cycle of H inner steps
    momentum: np.ndarray  # outer Nesterov momentum buffer (float32, same shape)


def outer_init(params: np.ndarray) -> OuterState:
    """Anchor at a float32 copy of ``params`` (the caller's buffer may change) and zero momentum."""
    p = as_vector("params", params).astype(np.float32, copy=True)
    return OuterState(anchor=p, momentum=np.zeros_like(p))


def outer_update(
    state: OuterState, averaged: np.ndarray, lr: float, momentum: float
) -> tuple[np.ndarray, OuterState]:
    """One outer Nesterov step on the pseudo-gradient ``anchor - averaged`` (module docstring).

    Returns ``(new_params, new_state)``; ``new_params`` is a fresh float32 vector equal to the
    new anchor (a separate copy: the caller may hand it to the trainer and mutate it).
    """
    a = as_vector("averaged", averaged)
    anchor = as_vector("anchor", state.anchor)
    m = as_vector("momentum", state.momentum)
    if a.shape != anchor.shape or m.shape != anchor.shape:
        raise ValueError(f"shape mismatch: anchor {anchor.shape}, momentum {m.shape}, "
                         f"averaged {a.shape}")
    lr_f, mu = float(lr), float(momentum)
    if not (np.isfinite(lr_f) and lr_f > 0):
        raise ValueError(f"lr must be a finite number > 0, got {lr}")
    if not 0.0 <= mu < 1.0:
        raise ValueError(f"momentum must be in [0, 1), got {momentum}")
    # float64 arithmetic, rounded to float32 once: with lr = 1, mu = 0 the result is the
    # averaged point bit for bit (the difference of two float32 values is exact in float64
    # unless their magnitudes are ~2^29 apart, far outside what parameters look like).
    anchor64 = anchor.astype(np.float64)
    delta = anchor64 - a.astype(np.float64)
    m_new = mu * m.astype(np.float64) + delta
    new = anchor64 - lr_f * (delta + mu * m_new)
    with np.errstate(over="ignore"):  # an overflow is what the finiteness check is for
        new32 = new.astype(np.float32)
    if not np.all(np.isfinite(new32)):
        raise ValueError("outer update result is not finite (overflow)")
    return new32.copy(), OuterState(anchor=new32, momentum=m_new.astype(np.float32))
