"""Classification heads on the backbone embedding: POSTER++'s Linear and the GReFEL head.

Both take `embedding (B, D) float` and `train: bool` and return a dict with these keys
(training, evaluation and prediction read them):

  logits           (B, C)  primary logits
  probs            (B, C)  softmax(logits / temperature), the primary distribution p
  confidence       (B,)    c(p) = 1 - H(p) / ln C
  corrected_probs  (B, C)  q_corr = c_p p + (1 - c_p) r  (PosterHead: = probs; r per
                           HeadConfig.correction)
  head_embedding   (B, d)  the vector the anchors live in (PosterHead: the input embedding)

GReFELHead adds:

  anchors              (C, K, d)  the anchor parameter
  anchor_probs         (B, C)     geometric correction g
  anchor_confidence    (B,)       c(g)
  attention_probs      (B, C)     attentive correction m
  attention_confidence (B,)       c(m)

All head math runs in float32 whatever the embedding dtype. The reliability formulas live in
`grefel_jax/reliability.py` (docs/reliability.md §2); the trust ramp τ is applied by the loss
(`losses.total_loss`), not here, because it depends on the training step.

The PyTorch -> Flax key map of the official ARBEx head is `convert.arbex_names.head_key_map`.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from grefel_jax import reliability
from grefel_jax.models.config import HeadConfig
from grefel_jax.models.layers import TorchDense, batch_norm, torch_default_init


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
        logits = TorchDense(self.config.num_classes, name="linear")(embedding)
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
      zero_last: start the last Linear at zero (HeadConfig.classifier_init='zeros').

    Call: (x (B, d) float32, train: bool) -> (B, C) logits. `train` switches BatchNorm to batch
    statistics (updating `batch_stats`) and enables dropout (needs a 'dropout' rng).
    """

    hidden: tuple[int, ...]
    num_classes: int
    dropout: float
    zero_last: bool = False

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        for i, width in enumerate(self.hidden):
            x = TorchDense(width, name=f"fc{i}")(x)
            x = nn.relu(x)
            x = batch_norm(train, name=f"bn{i}")(x)
            x = nn.Dropout(self.dropout, deterministic=not train)(x)
        last = TorchDense(self.num_classes, zero_init=self.zero_last, name=f"fc{len(self.hidden)}")
        return last(x)


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
        # PyTorch: out_proj is a Linear (default weight init) whose bias MHA then zeroes.
        zeros = nn.initializers.zeros_init()
        out_proj = nn.Dense(e, kernel_init=torch_default_init, bias_init=zeros, name="out_proj")
        return out_proj(mixed)


class BatchAttention(nn.Module):
    """ARBEx's `SelfAttn`: Linear Q/K/V d -> C, then 1-head attention ACROSS the batch axis.

    Reproduces the official code (docs/reliability.md §2.4): the (B, C) projections are one
    sequence of length B for `nn.MultiheadAttention(C, 1)`, so each sample's output depends on
    the rest of the batch (and eval results on batch composition).

    Attributes:
      num_classes: C.

    Call: (x (B, d) float32) -> (B, C) logits of the attentive correction.
    """

    num_classes: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        c = self.num_classes
        q = TorchDense(c, name="Q")(x)
        k = TorchDense(c, name="K")(x)
        v = TorchDense(c, name="V")(x)
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
    """GReFEL reliability-balancing head (docs/model.md §1f, docs/reliability.md §2,
    docs/decisions.md §2).

    embedding -> [reduction Linear D -> reduction_dim] -> head_embedding e (B, d)
      e -> classifier MLP -> logits -> p = softmax(logits / T), c_p
      e, anchors (C, K, d) -> distances -> g = anchor_similarity(., delta), c_g
      e -> attention (per-sample MHSA or ARBEx batch attention) -> m = softmax, c_m
      r = select_correction(config.correction, g, c_g, m, c_m) (default 'both':
        combine_corrections(g, c_g, m, c_m)); corrected_probs = balance(p, c_p, r)

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
            x = TorchDense(cfg.reduction_dim, name="reduction")(x)
        dim = x.shape[-1]

        logits = MLPClassifier(
            tuple(cfg.mlp_hidden),
            cfg.num_classes,
            cfg.mlp_dropout,
            zero_last=cfg.classifier_init == "zeros",
            name="classifier",
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

        # Both corrections are always computed (same parameters for every `cfg.correction`);
        # the ablations only change which one q_corr leans on.
        correction = reliability.select_correction(
            cfg.correction, anchor_probs, anchor_conf, attention_probs, attention_conf
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


def make_head(config: HeadConfig, name: str | None = None) -> nn.Module:
    """The head module for `config.kind` ('poster' -> PosterHead, 'grefel' -> GReFELHead)."""
    if config.kind == "poster":
        return PosterHead(config, name=name)
    return GReFELHead(config, name=name)


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
