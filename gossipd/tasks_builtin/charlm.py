"""Built-in task ``charlm``: a character-level transformer language model.

The corpus is the text of the Python standard library's ``pydoc_data.topics`` (79 help topics,
about 465 K characters). It ships with every Python, so nothing is downloaded; nodes of one swarm
must run the same Python minor version, since the topic texts change between versions.

Rules and the reasons for them:
- The vocabulary is fixed by this module, not computed from the data: newline, the 95 printable
  ASCII characters and one "unknown" id for everything else (a few curly quotes and dashes).
  Every node, on any Python version, therefore builds the same embedding shape.
- Held-out text is the last ``HELD_OUT_FRACTION`` of EVERY topic, identical on every node and never
  trained on; evaluation uses ``EVAL_WINDOWS`` fixed, evenly spaced windows of it. Cutting each
  topic (instead of holding out whole topics) keeps the held-out set representative of all
  topics, so a topic-skewed node is scored on the swarm's whole distribution.
- Partition ``topic`` (the natural non-IID split) gives whole topics to shards: largest topic
  first, each to the shard with the least text so far (ties: lower shard index). It needs no
  seed: the split is a pure function of ``num_shards``. Partition ``iid`` cuts all training text
  into windows and deals them out at random (seeded by the swarm seed).
- A shard's training text is its topics' train parts joined by a blank line, cut into windows of
  ``seq_len + 1`` ids every ``stride`` characters; windows may span two topics of one shard,
  as documents are packed in any LM training, but never reach into held-out text.
- The model is plain JAX over a dict pytree: token + learned position embeddings, pre-LayerNorm
  decoder blocks (causal self-attention, GELU MLP 4x), a final LayerNorm and an untied output
  projection. ``init`` uses only the key it is given.
- [train.options]: seq_len, d_model, layers, heads, stride (integers; unknown keys are refused,
  so a typo cannot silently train the default model). train.lr, lr_min, decay_steps and
  batch_size override the optimizer defaults when the config sets them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from functools import cache
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from gossipd.tasks import Batch, Params, Task, TaskContext, TaskError

NAME = "charlm"
VOCAB = "\n" + "".join(chr(c) for c in range(32, 127))
UNK = len(VOCAB)  # id of every character outside VOCAB
VOCAB_SIZE = len(VOCAB) + 1
HELD_OUT_FRACTION = 0.1
EVAL_WINDOWS = 256
TOPIC_SEPARATOR = "\n\n"
# Defaults sized for a 2-core CPU (about 18 ms per step at batch 16); see scripts/bench_lm.py.
DEFAULTS: Mapping[str, int] = {"seq_len": 64, "d_model": 64, "layers": 2, "heads": 4,
                               "stride": 32}
# The swarm's lr: nodes average their Adam steps, which partly cancel where the topic shards
# disagree, so a swarm wants a larger lr than one node on all the text (scripts/bench_lm.py:
# swarm 0.006 / 0.01 / 0.015 -> worst node 4.83 / 4.65 / 4.57; one node 0.003 / 0.006 / 0.01 ->
# 4.37 / 4.22 / 4.31, for 4 x 1500 = 6000 steps in all).
DEFAULT_LR = 0.015
SINGLE_NODE_LR = 0.006  # the best of those for one node trained alone
DEFAULT_DECAY_STEPS = 3000
DEFAULT_BATCH = 16
WEIGHT_DECAY = 0.01


class LMConfig(NamedTuple):
    """Static model shape (hashable: a closure constant under jit)."""

    seq_len: int = 64
    d_model: int = 64
    layers: int = 2
    heads: int = 4
    vocab: int = VOCAB_SIZE


@cache
def _topics() -> tuple[tuple[str, str], ...]:
    from pydoc_data.topics import topics

    return tuple(sorted(topics.items()))


def encode(text: str) -> np.ndarray:
    """Character ids (int32) of ``text``; characters outside VOCAB map to UNK."""
    cp = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32).astype(np.int64)
    ids = np.where((cp >= 32) & (cp < 127), cp - 31, UNK)
    return np.where(cp == 10, 0, ids).astype(np.int32)


def decode(ids: np.ndarray) -> str:
    return "".join(VOCAB[i] if i < UNK else "\ufffd" for i in np.asarray(ids).tolist())


def split_topic(text: str) -> tuple[str, str]:
    """(train part, held-out part) of one topic: the held-out part is its last tenth."""
    cut = len(text) - max(1, math.ceil(HELD_OUT_FRACTION * len(text)))
    return text[:cut], text[cut:]


def topic_shards(num_shards: int) -> list[list[str]]:
    """Topic names of every shard under partition ``topic`` (disjoint, covering, sorted)."""
    topics = _topics()
    if not 1 <= num_shards <= len(topics):
        raise TaskError(f"task {NAME!r}: partition 'topic' needs 1 <= num_shards <= "
                        f"{len(topics)} (one topic at least per shard), got {num_shards}")
    sizes = {name: len(split_topic(text)[0]) for name, text in topics}
    shards: list[list[str]] = [[] for _ in range(num_shards)]
    load = [0] * num_shards
    for name in sorted(sizes, key=lambda n: (-sizes[n], n)):
        k = min(range(num_shards), key=lambda j: (load[j], j))
        shards[k].append(name)
        load[k] += sizes[name]
    return [sorted(s) for s in shards]


def train_text(names: list[str]) -> str:
    """The training text of these topics: their train parts, joined in sorted order."""
    texts = dict(_topics())
    return TOPIC_SEPARATOR.join(split_topic(texts[n])[0] for n in sorted(names))


def held_out_text() -> str:
    return TOPIC_SEPARATOR.join(split_topic(text)[1] for _, text in _topics())


def windows(ids: np.ndarray, width: int, stride: int) -> np.ndarray:
    """Rows ``ids[i*stride : i*stride + width]`` (a contiguous int32 copy)."""
    if len(ids) < width:
        return np.zeros((0, width), np.int32)
    view = np.lib.stride_tricks.sliding_window_view(ids, width)[::stride]
    return np.ascontiguousarray(view, dtype=np.int32)


def eval_windows(seq_len: int) -> np.ndarray:
    """The fixed held-out windows (EVAL_WINDOWS rows of seq_len + 1 ids, evenly spaced)."""
    ids = encode(held_out_text())
    width = seq_len + 1
    if len(ids) < width:
        raise TaskError(f"task {NAME!r}: seq_len {seq_len} is longer than the held-out text")
    starts = np.linspace(0, len(ids) - width, EVAL_WINDOWS).round().astype(np.int64)
    return np.stack([ids[s:s + width] for s in starts]).astype(np.int32)


def shard_windows(ctx: TaskContext, seq_len: int, stride: int) -> np.ndarray:
    """This node's training windows under ``ctx.partition``."""
    width = seq_len + 1
    if not 0 <= ctx.shard_index < ctx.num_shards:
        raise TaskError(f"task {NAME!r}: shard_index must be in 0..{ctx.num_shards - 1}, "
                        f"got {ctx.shard_index}")
    if ctx.partition == "topic":
        names = topic_shards(ctx.num_shards)[ctx.shard_index]
        return windows(encode(train_text(names)), width, stride)
    if ctx.partition == "iid":
        all_names = [name for name, _ in _topics()]
        rows = windows(encode(train_text(all_names)), width, stride)
        if not 1 <= ctx.num_shards <= len(rows):
            raise TaskError(f"task {NAME!r}: num_shards must be in 1..{len(rows)}")
        seq = np.random.SeedSequence([ctx.seed, ctx.num_shards, 0x6C6D])  # 0x6C6D: "lm"
        perm = np.random.default_rng(seq).permutation(len(rows))
        return rows[np.sort(np.array_split(perm, ctx.num_shards)[ctx.shard_index])]
    raise TaskError(f"task {NAME!r}: partition must be 'topic' or 'iid', got {ctx.partition!r}")


# ---- the model: pure functions over a params dict ----------------------------------------

def init_params(cfg: LMConfig, key: jax.Array) -> Params:
    """Normal(0.02) weights; residual output projections scaled down by sqrt(2 * layers)
    so the residual stream does not grow with depth (GPT-2 init)."""
    d, std = cfg.d_model, 0.02
    out_std = std / math.sqrt(2 * cfg.layers)
    keys = iter(jax.random.split(key, 3 + 4 * cfg.layers))

    def normal(shape: tuple[int, ...], s: float = std) -> jax.Array:
        return s * jax.random.normal(next(keys), shape, jnp.float32)

    def zeros(n: int) -> jax.Array:
        return jnp.zeros((n,), jnp.float32)

    blocks = [{
        "ln1_g": jnp.ones((d,), jnp.float32), "ln1_b": zeros(d),
        "w_qkv": normal((d, 3 * d)), "b_qkv": zeros(3 * d),
        "w_o": normal((d, d), out_std), "b_o": zeros(d),
        "ln2_g": jnp.ones((d,), jnp.float32), "ln2_b": zeros(d),
        "w_up": normal((d, 4 * d)), "b_up": zeros(4 * d),
        "w_down": normal((4 * d, d), out_std), "b_down": zeros(d),
    } for _ in range(cfg.layers)]
    return {"embed": normal((cfg.vocab, d)), "pos": normal((cfg.seq_len, d)),
            "blocks": blocks, "lnf_g": jnp.ones((d,), jnp.float32), "lnf_b": zeros(d),
            "head": normal((d, cfg.vocab)), "head_b": zeros(cfg.vocab)}


def _layer_norm(x: jax.Array, g: jax.Array, b: jax.Array) -> jax.Array:
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) * jax.lax.rsqrt(var + 1e-5) * g + b


def forward(cfg: LMConfig, params: Params, tokens: jax.Array) -> jax.Array:
    """Logits (B, T, vocab) for int tokens (B, T), T <= seq_len; position t sees <= t."""
    _, t = tokens.shape
    h, dh = cfg.heads, cfg.d_model // cfg.heads
    x = params["embed"][tokens] + params["pos"][:t]
    # Additive mask: 0 where a query may see a key (key position <= query position).
    mask = jnp.where(jnp.tril(jnp.ones((t, t), bool)), 0.0, -1e9)
    for blk in params["blocks"]:
        y = _layer_norm(x, blk["ln1_g"], blk["ln1_b"])
        qkv = (y @ blk["w_qkv"] + blk["b_qkv"]).reshape(*y.shape[:2], 3, h, dh)
        q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
        # Softmax in float32 even when the trainer computes in bfloat16.
        scores = jnp.einsum("bqhd,bkhd->bhqk", q, k).astype(jnp.float32) / math.sqrt(dh)
        attn = jax.nn.softmax(scores + mask, axis=-1).astype(v.dtype)
        y = jnp.einsum("bhqk,bkhd->bqhd", attn, v).reshape(x.shape)
        x = x + y @ blk["w_o"] + blk["b_o"]
        y = _layer_norm(x, blk["ln2_g"], blk["ln2_b"])
        x = x + jax.nn.gelu(y @ blk["w_up"] + blk["b_up"]) @ blk["w_down"] + blk["b_down"]
    x = _layer_norm(x, params["lnf_g"], params["lnf_b"])
    out: jax.Array = x @ params["head"] + params["head_b"]
    return out


def token_loss(cfg: LMConfig, params: Params, tokens: jax.Array) -> jax.Array:
    """Mean next-character cross-entropy (nats) over windows (B, seq_len + 1)."""
    logits = forward(cfg, params, tokens[:, :-1]).astype(jnp.float32)
    ce: jax.Array = optax.softmax_cross_entropy_with_integer_labels(logits, tokens[:, 1:])
    return ce.mean()


# ---- the task -----------------------------------------------------------------------------

def _int_option(options: Mapping[str, Any], key: str) -> int:
    value = options.get(key, DEFAULTS[key])
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise TaskError(f"task {NAME!r}: option {key!r} must be an integer >= 1, got {value!r}")
    return value


def make_optimizer(lr: float, decay_steps: int, lr_min: float | None = None
                   ) -> optax.GradientTransformation:
    """Clip to global norm 1, then AdamW on a linear warmup (a tenth of ``decay_steps``, at
    most 100 steps) + cosine schedule ending at ``lr_min`` (default lr/10), flat after
    ``decay_steps``. The schedule counts the optimizer's own updates, so it resumes with the
    checkpointed optimizer state. Weight decay applies to matrices only (not to biases and
    LayerNorm gains)."""
    warmup = max(1, min(100, decay_steps // 10))
    schedule = optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=lr, warmup_steps=warmup,
        decay_steps=max(decay_steps, warmup + 1),
        end_value=lr / 10 if lr_min is None else lr_min)

    def matrices(params: Params) -> Any:
        return jax.tree_util.tree_map(lambda p: p.ndim >= 2, params)

    return optax.chain(optax.clip_by_global_norm(1.0),
                       optax.adamw(schedule, b1=0.9, b2=0.99, weight_decay=WEIGHT_DECAY,
                                   mask=matrices))


def factory(ctx: TaskContext) -> Task:
    unknown = sorted(set(ctx.options) - set(DEFAULTS))
    if unknown:
        raise TaskError(f"task {NAME!r}: unknown option(s) {', '.join(unknown)}; "
                        f"known: {', '.join(DEFAULTS)}")
    opts = {key: _int_option(ctx.options, key) for key in DEFAULTS}
    if opts["d_model"] % opts["heads"]:
        raise TaskError(f"task {NAME!r}: d_model {opts['d_model']} is not a multiple of "
                        f"heads {opts['heads']}")
    cfg = LMConfig(seq_len=opts["seq_len"], d_model=opts["d_model"], layers=opts["layers"],
                   heads=opts["heads"])
    train = shard_windows(ctx, cfg.seq_len, opts["stride"])
    if len(train) == 0:
        raise TaskError(f"task {NAME!r}: shard {ctx.shard_index} has less text than one window "
                        f"of {cfg.seq_len + 1} characters; use a smaller seq_len")
    # Hyperparameters the config set; others it may carry (momentum, hidden) are not ours.
    lr = float(ctx.hyper.get("lr", DEFAULT_LR))
    lr_min = float(ctx.hyper.get("lr_min", lr / 10))
    decay_steps = int(ctx.hyper.get("decay_steps", DEFAULT_DECAY_STEPS))
    batch_size = int(ctx.hyper.get("batch_size", DEFAULT_BATCH))
    if not (lr > 0 and 0 <= lr_min <= lr and decay_steps >= 1 and batch_size >= 1):
        raise TaskError(f"task {NAME!r}: need lr > 0, 0 <= lr_min <= lr, decay_steps >= 1 "
                        f"and batch_size >= 1, got {lr}, {lr_min}, {decay_steps}, {batch_size}")

    def loss(params: Params, batch: Batch) -> jax.Array:
        return token_loss(cfg, params, batch["tokens"])

    def evaluate(params: Params, data: Batch) -> Mapping[str, jax.Array]:
        ce = token_loss(cfg, params, data["tokens"])
        return {"perplexity": jnp.exp(ce), "loss": ce}

    return Task(
        name=NAME,
        init=lambda key: init_params(cfg, key),
        loss=loss,
        optimizer=make_optimizer(lr, decay_steps, lr_min),
        train_data={"tokens": train},
        eval_data={"tokens": eval_windows(cfg.seq_len)},
        evaluate=evaluate,
        metric="perplexity",
        higher_is_better=False,
        batch_size=batch_size,
        layout=f"charlm-v{cfg.vocab}-t{cfg.seq_len}-d{cfg.d_model}-l{cfg.layers}-h{cfg.heads}",
    )
