"""Which vectors InfoPrompt scores: the prompt, Z (and Z') and the label vectors θ.

Pure functions over model outputs; nothing here has parameters.

* Prompt: the `[P, E]` prompt (or `[B, P, E]` from `PromptGenerator`) becomes
  `Q` query vectors. `mean`: one query, the mean over prompt tokens (for a
  bilinear critic its score equals the mean of the per-token scores).
  `per_token`: `Q = P` queries, one InfoNCE estimate per prompt token, averaged.
* Z: `decoder_first` is the final decoder state (after the final norm) at the
  first target position, the vector the LM head reads to score the label's
  first token; `encoder_mean` is the mean of the encoder outputs over valid
  positions (prompt positions included when the pass had a prompt).
* θ: columns of the frozen LM head (`decoder/logits_dense/kernel`, `[E, V]`),
  the parameters of the head that scores the label words, for a label's
  tokens: `first` (the label's first token, the one Z is scored against) or
  `mean` (over the label's tokens, EOS excluded). `class_mean` θ is the mean
  of the class labels' columns, one vector for all examples (reads no
  target); `gold_label` θ is the example's own target's column.
"""
from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from prompt_tuning.errors import UserError

Array = jax.Array

PROMPT_POOLINGS = ("mean", "per_token")
Z_SOURCES = ("decoder_first", "encoder_mean")
LABEL_PIECES = ("first", "mean")
THETAS = ("class_mean", "gold_label")


def masked_mean(values: Array, valid: Array) -> Array:
  """`[B, L, E]` values, `[B, L]` bool -> `[B, E]` float32 mean over valid positions.

  A row without valid positions (batch padding) gives zeros, not NaN.
  """
  weights = valid.astype(jnp.float32)[..., None]
  total = jnp.sum(values.astype(jnp.float32) * weights, axis=-2)
  return total / jnp.maximum(jnp.sum(weights, axis=-2), 1.0)


def prompt_queries(prompt: Array, pooling: str) -> Array:
  """`[P, E]` or `[B, P, E]` prompt -> `[Q, E]` or `[B, Q, E]` float32 query vectors.

  `Q = 1` for `mean`, `Q = P` for `per_token`.
  """
  if pooling not in PROMPT_POOLINGS:
    raise ValueError(f"unknown prompt pooling {pooling!r}; choose one of {PROMPT_POOLINGS}")
  prompt = prompt.astype(jnp.float32)
  if pooling == "mean":
    return jnp.mean(prompt, axis=-2, keepdims=True)
  return prompt


def select_representation(z_source: str, decoder_hidden: Array = None, encoded: Array = None,
                          encoder_valid: Array = None) -> Array:
  """The example's representation Z `[B, E]` (float32).

  Args:
    z_source: `decoder_first` (needs `decoder_hidden`) or `encoder_mean`
      (needs `encoded` and `encoder_valid`).
    decoder_hidden: `[B, Lt, E]` final decoder states after the final norm.
    encoded: `[B, L', E]` encoder outputs.
    encoder_valid: `[B, L']` bool.
  """
  if z_source == "decoder_first":
    if decoder_hidden is None:
      raise ValueError("z_source='decoder_first' needs decoder_hidden [B, Lt, E]")
    return decoder_hidden[:, 0, :].astype(jnp.float32)
  if z_source == "encoder_mean":
    if encoded is None or encoder_valid is None:
      raise ValueError("z_source='encoder_mean' needs encoded [B, L', E] and encoder_valid [B, L']")
    return masked_mean(encoded, encoder_valid)
  raise ValueError(f"unknown z_source {z_source!r}; choose one of {Z_SOURCES}")


def label_vectors(logits_kernel: Array, label_tokens: Array, pieces: str = "first",
                  eos_id: int = 1) -> Array:
  """Frozen LM-head columns θ of label tokens, `[..., E]` float32.

  Serves per-example targets (`decoder_target_tokens` `[B, Lt]` -> `[B, E]`)
  and per-class token ids (`[C, T]`, 0-padded -> `[C, E]`) alike.

  Args:
    logits_kernel: `[E, V]`, T5 1.1's untied `decoder/logits_dense/kernel`.
    label_tokens: `[..., T]` int token ids; 0 is padding.
    pieces: `first`: the column of the first token. `mean`: the mean of the
      columns of all tokens that are neither padding nor `eos_id`; a label with
      no such token (only EOS, or batch padding) uses its first token's column.
    eos_id: EOS token id (T5: 1), excluded from `mean`.
  """
  if pieces not in LABEL_PIECES:
    raise ValueError(f"unknown label pieces {pieces!r}; choose one of {LABEL_PIECES}")
  table = logits_kernel.T  # [V, E]
  first = jnp.take(table, label_tokens[..., 0], axis=0).astype(jnp.float32)
  if pieces == "first":
    return first
  keep = (label_tokens > 0) & (label_tokens != eos_id)
  columns = jnp.take(table, label_tokens, axis=0)  # [..., T, E]
  mean = masked_mean(columns, keep)
  return jnp.where(jnp.any(keep, axis=-1, keepdims=True), mean, first)


def class_label_tokens(labels: Sequence[str], vocabulary) -> np.ndarray:
  """`[C, T]` int32 token ids of the class labels (0-padded, no EOS), for `label_vectors`.

  Args:
    labels: the label words, e.g. `CLASS_LABELS = ['entailment', 'not_entailment']`.
    vocabulary: the task's targets vocabulary (a seqio vocabulary).
  """
  ids = [list(vocabulary.encode(label)) for label in labels]
  for label, tokens in zip(labels, ids):
    if not tokens:
      raise UserError(f"class label {label!r} tokenizes to nothing; check CLASS_LABELS")
  out = np.zeros((len(ids), max(len(t) for t in ids)), np.int32)
  for row, tokens in enumerate(ids):
    out[row, :len(tokens)] = tokens
  return out


def theta_vectors(theta: str, logits_kernel: Array, batch_size: int, pieces: str = "first",
                  class_tokens: Optional[Array] = None,
                  target_tokens: Optional[Array] = None) -> Array:
  """θ of each example, `[B, E]` float32.

  Args:
    theta: `class_mean` (needs only `class_tokens`: the same row for every
      example) or `gold_label` (needs `target_tokens`).
    logits_kernel: `[E, V]` LM head.
    batch_size: B.
    pieces: `first` or `mean` (see `label_vectors`).
    class_tokens: `[C, T]` from `class_label_tokens`.
    target_tokens: `[B, Lt]` the examples' targets.
  """
  if theta == "class_mean":
    if class_tokens is None:
      raise ValueError("theta='class_mean' needs class_tokens [C, T]")
    mean = jnp.mean(label_vectors(logits_kernel, jnp.asarray(class_tokens), pieces), axis=0)
    return jnp.broadcast_to(mean, (batch_size, mean.shape[-1]))
  if theta == "gold_label":
    if target_tokens is None:
      raise ValueError("theta='gold_label' needs target_tokens [B, Lt]")
    return label_vectors(logits_kernel, target_tokens, pieces)
  raise ValueError(f"unknown theta {theta!r}; choose one of {THETAS}")
