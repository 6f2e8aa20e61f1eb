"""Classification heads on the backbone embedding: POSTER++'s Linear and the GReFEL head.

Both take `embedding (B, D) float` and `train: bool` and return a dict with these keys
(training, evaluation and prediction read them):

  logits           (B, C)  primary logits
  probs            (B, C)  softmax(logits / temperature), the primary distribution p
  confidence       (B,)    c(p) = 1 - H(p) / ln C
  corrected_probs  (B, C)  q_corr = c_p p + (1 - c_p) r  (PosterHead: = probs)
  head_embedding   (B, d)  the vector the anchors live in (PosterHead: the input embedding)

GReFELHead adds:

  anchors              (C, K, d)  the anchor parameter
  anchor_probs         (B, C)     geometric correction g
  anchor_confidence    (B,)       c(g)
  attention_probs      (B, C)     attentive correction m
  attention_confidence (B,)       c(m)

All head math runs in float32 whatever the embedding dtype. The reliability formulas live in
`grefel_jax/reliability.py` (reference.md §2); the trust ramp τ is applied by the loss
(`losses.total_loss`), not here, because it depends on the training step.

PyTorch -> Flax parameter map of the official ARBEx head (`arbex_torch_key_map` returns it):

  classifier.net.{4i}.weight/bias      -> params classifier/fc{i}/kernel (transposed)/bias
  classifier.net.{4i+2}.weight/bias    -> params classifier/bn{i}/scale/bias
  classifier.net.{4i+2}.running_mean/var -> batch_stats classifier/bn{i}/mean/var
  classifier.net.{4n}.weight/bias      -> params classifier/fc{n}/kernel (T)/bias  (n hidden)
  anchors.anchors                      -> params anchors
  selfattn.{Q,K,V}.weight/bias         -> params attention/{Q,K,V}/kernel (T)/bias
  selfattn.attn_fn.in_proj_weight      -> params attention/attn_fn/in_proj/kernel (transposed:
                                          (3C, C) -> (C, 3C); columns [0:C] = q, [C:2C] = k,
                                          [2C:3C] = v, the row blocks of PyTorch's weight)
  selfattn.attn_fn.in_proj_bias        -> params attention/attn_fn/in_proj/bias
  selfattn.attn_fn.out_proj.weight/bias -> params attention/attn_fn/out_proj/kernel (T)/bias

(`num_batches_tracked` has no counterpart. ARBEx never saves `selfattn.*`, reference.md §6a.9.)
POSTER++'s `VIT.head.linear.{weight,bias}` -> PosterHead params linear/kernel (T)/bias.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from grefel_jax import reliability
from grefel_jax.models.config import HeadConfig

# BatchNorm1d of the ARBEx MLP: PyTorch momentum 0.1 == Flax momentum 0.9; eps 1e-5.
_BN_MOMENTUM = 0.9
_BN_EPSILON = 1e-5


def _primary_outputs(logits: jax.Array, temperature: float) -> dict[str, jax.Array]:
    probs = jax.nn.softmax(logits / temperature, axis=-1)
    return {
        "logits": logits,
        "probs": probs,
        "confidence": reliability.normalized_entropy_confidence(probs),
    }


class PosterHead(nn.Module):
    """POSTER++'s head: one Linear D -> C on the embedding.

    Attributes:
      config: HeadConfig (uses num_classes and temperature).

    Call: (embedding (B, D) float, train: bool) -> dict with logits, probs, confidence,
    corrected_probs (= probs) and head_embedding (= the input embedding).
    """

    config: HeadConfig

    @nn.compact
    def __call__(self, embedding: jax.Array, train: bool = False) -> dict[str, jax.Array]:
        del train  # No dropout or BatchNorm here; the argument keeps both heads interchangeable.
        embedding = jnp.asarray(embedding, jnp.float32)
        logits = nn.Dense(self.config.num_classes, name="linear")(embedding)
        out = _primary_outputs(logits, self.config.temperature)
        out["corrected_probs"] = out["probs"]
        out["head_embedding"] = embedding
        return out


class MLPClassifier(nn.Module):
    """The ARBEx primary MLP: [Linear -> ReLU -> BatchNorm -> Dropout] per hidden width, Linear.

    Submodules fc{i} / bn{i} are ARBEx `classifier.net.{4i}` / `classifier.net.{4i+2}`; the last
    Linear fc{n} is `classifier.net.{4n}` (ReLU and Dropout hold no parameters).

    Attributes:
      hidden: hidden widths, e.g. (384, 192, 96).
      num_classes: C.
      dropout: dropout rate after each hidden block.

    Call: (x (B, d) float32, train: bool) -> (B, C) logits. `train` switches BatchNorm to batch
    statistics (updating `batch_stats`) and enables dropout (needs a 'dropout' rng).
    """

    hidden: tuple[int, ...]
    num_classes: int
    dropout: float

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        for i, width in enumerate(self.hidden):
            x = nn.Dense(width, name=f"fc{i}")(x)
            x = nn.relu(x)
            x = nn.BatchNorm(
                use_running_average=not train,
                momentum=_BN_MOMENTUM,
                epsilon=_BN_EPSILON,
                name=f"bn{i}",
            )(x)
            x = nn.Dropout(self.dropout, deterministic=not train)(x)
        return nn.Dense(self.num_classes, name=f"fc{len(self.hidden)}")(x)


class PerSampleAttention(nn.Module):
    """GReFEL's attentive correction: multi-head self-attention WITHIN each sample.

    The embedding (B, d) is split into `num_tokens` tokens of d / num_tokens dims; q = k = v =
    these tokens; standard multi-head attention (Flax `MultiHeadDotProductAttention`, with its
    own q/k/v/out projections) mixes them; the flattened result goes through a Linear to C.
    No sample sees another one, so predictions do not depend on the batch.

    Attributes:
      num_classes: C.
      num_heads: attention heads (token dim must be divisible by it).
      num_tokens: tokens per embedding (d must be divisible by it).

    Call: (x (B, d) float32) -> (B, C) logits of the attentive correction.
    """

    num_classes: int
    num_heads: int
    num_tokens: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        batch, dim = x.shape
        _check_per_sample_dims(dim, self.num_tokens, self.num_heads)
        token_dim = dim // self.num_tokens
        tokens = x.reshape(batch, self.num_tokens, token_dim)
        mixed = nn.MultiHeadDotProductAttention(
            num_heads=self.num_heads,
            qkv_features=token_dim,
            out_features=token_dim,
            deterministic=True,
            name="mhsa",
        )(tokens)  # q = k = v = tokens (inputs_k and inputs_v default to inputs_q)
        return nn.Dense(self.num_classes, name="out")(mixed.reshape(batch, dim))


class TorchMultiheadAttention(nn.Module):
    """`torch.nn.MultiheadAttention(embed_dim=E, num_heads=1)` on a 2-D (L, E) input.

    PyTorch reads a 2-D input as ONE unbatched sequence of length L, so with L = batch size
    every sample attends to every other sample. Parameters: `in_proj` Dense E -> 3E (kernel =
    in_proj_weight.T, bias = in_proj_bias) and `out_proj` Dense E -> E (kernel =
    out_proj.weight.T). Initialisers follow PyTorch (Xavier-uniform in_proj, zero biases).

    Attributes:
      embed_dim: E.

    Call: (query, key, value each (L, E) float32) -> (L, E).
    """

    embed_dim: int

    @nn.compact
    def __call__(self, query: jax.Array, key: jax.Array, value: jax.Array) -> jax.Array:
        e = self.embed_dim
        in_proj = nn.Dense(
            3 * e,
            kernel_init=nn.initializers.xavier_uniform(),
            bias_init=nn.initializers.zeros_init(),
            name="in_proj",
        )
        # Applying the stacked projection to each input and slicing its block equals PyTorch's
        # F.linear(q, W[0:E], b[0:E]) etc.; XLA drops the unused two thirds of each product.
        q = in_proj(query)[:, :e]
        k = in_proj(key)[:, e : 2 * e]
        v = in_proj(value)[:, 2 * e :]
        scores = (q / jnp.sqrt(jnp.float32(e))) @ k.T  # (L, L): PyTorch scales q before q k^T.
        mixed = jax.nn.softmax(scores, axis=-1) @ v
        return nn.Dense(e, bias_init=nn.initializers.zeros_init(), name="out_proj")(mixed)


class BatchAttention(nn.Module):
    """ARBEx's `SelfAttn`: Linear Q/K/V d -> C, then 1-head attention ACROSS the batch axis.

    Reproduces the official code (reference.md §2.4): the (B, C) projections are one sequence
    of length B for `nn.MultiheadAttention(C, 1)`, so each sample's output depends on the rest
    of the batch (and eval results on batch composition).

    Attributes:
      num_classes: C.

    Call: (x (B, d) float32) -> (B, C) logits of the attentive correction.
    """

    num_classes: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        c = self.num_classes
        q = nn.Dense(c, name="Q")(x)
        k = nn.Dense(c, name="K")(x)
        v = nn.Dense(c, name="V")(x)
        return TorchMultiheadAttention(c, name="attn_fn")(q, k, v)


def _check_per_sample_dims(dim: int, num_tokens: int, num_heads: int) -> None:
    if num_tokens < 1 or dim % num_tokens:
        raise ValueError(
            f"model.head.attention='per_sample': the head embedding dim {dim} (model.head."
            f"reduction_dim, or the backbone width when it is None/0) must be divisible by "
            f"model.head.attention_tokens={num_tokens}."
        )
    token_dim = dim // num_tokens
    if num_heads < 1 or token_dim % num_heads:
        raise ValueError(
            f"model.head.attention='per_sample': token dim {token_dim} (= embedding dim {dim} / "
            f"model.head.attention_tokens={num_tokens}) must be divisible by "
            f"model.head.attention_heads={num_heads}."
        )


class GReFELHead(nn.Module):
    """GReFEL reliability-balancing head (reference.md §1f, §2; DECISIONS.md §2).

    embedding -> [reduction Linear D -> reduction_dim] -> head_embedding e (B, d)
      e -> classifier MLP -> logits -> p = softmax(logits / T), c_p
      e, anchors (C, K, d) -> distances -> g = anchor_similarity(., delta), c_g
      e -> attention (per-sample MHSA or ARBEx batch attention) -> m = softmax, c_m
      r = combine_corrections(g, c_g, m, c_m); corrected_probs = balance(p, c_p, r)

    Attributes:
      config: HeadConfig.

    Call: (embedding (B, D) float, train: bool) -> the output dict of the module docstring.
    With train=True it needs a 'dropout' rng and `mutable=['batch_stats']`.
    """

    config: HeadConfig

    @nn.compact
    def __call__(self, embedding: jax.Array, train: bool = False) -> dict[str, jax.Array]:
        cfg = self.config
        x = jnp.asarray(embedding, jnp.float32)
        if cfg.reduction_dim:
            # GReFEL figure: "Linear Reduction Layer" 768 -> 128 (form unknown; a plain Linear).
            x = nn.Dense(cfg.reduction_dim, name="reduction")(x)
        dim = x.shape[-1]

        logits = MLPClassifier(
            tuple(cfg.mlp_hidden), cfg.num_classes, cfg.mlp_dropout, name="classifier"
        )(x, train)
        out = _primary_outputs(logits, cfg.temperature)

        if cfg.anchor_init == "zeros":
            anchor_init = nn.initializers.zeros_init()
        else:
            anchor_init = nn.initializers.normal(stddev=cfg.anchor_init_std)
        anchors = self.param("anchors", anchor_init, (cfg.num_classes, cfg.num_anchors, dim))
        distances = reliability.anchor_distances(x, anchors)
        anchor_probs = reliability.anchor_similarity(distances, cfg.delta)
        anchor_conf = reliability.normalized_entropy_confidence(anchor_probs)

        if cfg.attention == "per_sample":
            attention = PerSampleAttention(
                cfg.num_classes, cfg.attention_heads, cfg.attention_tokens, name="attention"
            )
        else:
            attention = BatchAttention(cfg.num_classes, name="attention")
        attention_probs = jax.nn.softmax(attention(x), axis=-1)
        attention_conf = reliability.normalized_entropy_confidence(attention_probs)

        correction = reliability.combine_corrections(
            anchor_probs, anchor_conf, attention_probs, attention_conf
        )
        out.update(
            corrected_probs=reliability.balance(out["probs"], out["confidence"], correction),
            head_embedding=x,
            anchors=anchors,
            anchor_probs=anchor_probs,
            anchor_confidence=anchor_conf,
            attention_probs=attention_probs,
            attention_confidence=attention_conf,
        )
        return out


def make_head(config: HeadConfig) -> nn.Module:
    """The head module for `config.kind` ('poster' -> PosterHead, 'grefel' -> GReFELHead)."""
    if config.kind == "poster":
        return PosterHead(config)
    return GReFELHead(config)


def arbex_torch_key_map(config: HeadConfig) -> dict[str, tuple[str, tuple[str, ...], bool]]:
    """Where each official ARBEx head tensor goes in this GReFELHead's variables.

    Args:
      config: a HeadConfig with reduction_dim None/0 and attention='batch' (the `arbex_code`
        preset): ARBEx has neither a reduction layer nor per-sample attention.

    Returns:
      {torch key: (collection, flax path, transpose)} for the keys of reference
      state_dict_keys.md §F with prefixes `classifier.`, `anchors.`, `selfattn.`; `transpose`
      says the 2-D tensor must be transposed (Linear weight -> Dense kernel).
      `num_batches_tracked` is omitted (no counterpart).
    """
    if config.kind != "grefel" or config.reduction_dim or config.attention != "batch":
        raise ValueError(
            "arbex_torch_key_map: the ARBEx head has no reduction and batch attention; need "
            "model.head.kind='grefel', reduction_dim=None and attention='batch' (preset "
            f"'arbex_code'), got kind={config.kind!r}, reduction_dim={config.reduction_dim}, "
            f"attention={config.attention!r}."
        )
    mapping: dict[str, tuple[str, tuple[str, ...], bool]] = {}
    n = len(config.mlp_hidden)
    for i in range(n + 1):
        fc = f"classifier.net.{4 * i}"
        mapping[f"{fc}.weight"] = ("params", ("classifier", f"fc{i}", "kernel"), True)
        mapping[f"{fc}.bias"] = ("params", ("classifier", f"fc{i}", "bias"), False)
        if i < n:
            bn = f"classifier.net.{4 * i + 2}"
            mapping[f"{bn}.weight"] = ("params", ("classifier", f"bn{i}", "scale"), False)
            mapping[f"{bn}.bias"] = ("params", ("classifier", f"bn{i}", "bias"), False)
            mapping[f"{bn}.running_mean"] = ("batch_stats", ("classifier", f"bn{i}", "mean"), False)
            mapping[f"{bn}.running_var"] = ("batch_stats", ("classifier", f"bn{i}", "var"), False)
    mapping["anchors.anchors"] = ("params", ("anchors",), False)
    for name in ("Q", "K", "V"):
        mapping[f"selfattn.{name}.weight"] = ("params", ("attention", name, "kernel"), True)
        mapping[f"selfattn.{name}.bias"] = ("params", ("attention", name, "bias"), False)
    attn = ("attention", "attn_fn")
    mapping["selfattn.attn_fn.in_proj_weight"] = ("params", (*attn, "in_proj", "kernel"), True)
    mapping["selfattn.attn_fn.in_proj_bias"] = ("params", (*attn, "in_proj", "bias"), False)
    mapping["selfattn.attn_fn.out_proj.weight"] = ("params", (*attn, "out_proj", "kernel"), True)
    mapping["selfattn.attn_fn.out_proj.bias"] = ("params", (*attn, "out_proj", "bias"), False)
    return mapping


def head_output_keys(config: HeadConfig) -> tuple[str, ...]:
    """The keys of the dict a head built from `config` returns (for callers that validate)."""
    keys = ("logits", "probs", "confidence", "corrected_probs", "head_embedding")
    if config.kind == "grefel":
        keys += (
            "anchors",
            "anchor_probs",
            "anchor_confidence",
            "attention_probs",
            "attention_confidence",
        )
    return keys
