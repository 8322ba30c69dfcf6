"""Closed-form trainable-parameter counts of the PET methods on a T5 1.1 config.

Written out from the dimensions, independently of the modules that create the
parameters, so tests can check the created trees against them. Notation:
`Le, Ld` layers, `E` d_model, `J = H·D` joined heads, `M` mlp width, `A` MLP
input projections (2 for the gated `wi_0, wi_1`), `V` vocabulary,
`n_att = Le + Ld (+ Ld with cross-attention)` attention modules.

  bitfit         n_att·(3J + E) + (Le+Ld)·(A·M + E) + [(2Le+1 + 3Ld+1)·E] + [V]
  lora           n_att · |targets| · r · (E + J)
  adapter        (n_att + Le + Ld) · (2·E·m + [m + E])
  ia3            n_att · 2J + (Le + Ld) · M
  concat/prefix  n_att · (2·P·J + [H])                       (gate per head)
  prompt         P · E
  apet           the budget (an int, or a method name: that method's count)
  full_finetune  every backbone parameter
"""
from typing import Any, Dict

from prompt_tuning.errors import UserError
from prompt_tuning.models.config import T5Config

_SETTINGS: Dict[str, Dict[str, Any]] = {
    "bitfit": dict(cross_attention=False, norms=True, logits=True),
    "lora": dict(rank=8, alpha=16.0, targets=("query", "value"), cross_attention=False),
    "adapter": dict(bottleneck=24, use_bias=True, activation="gelu", cross_attention=False),
    "ia3": dict(cross_attention=True),
    "concat": dict(length=8, gated=True, cross_attention=True),
    "prompt": dict(length=100),
    "apet": dict(budget=None),
    "full_finetune": dict(),
}
_SETTINGS["prefix"] = _SETTINGS["concat"]


def count_parameters(method: str, config: T5Config, **settings) -> int:
  """Trainable parameters of `method` on `config` at the paper's settings (overridable).

  Args:
    method: bitfit, lora, adapter, ia3, concat (= prefix), prompt, apet, full_finetune.
    config: the backbone's `T5Config`.
    **settings: the method's factory arguments (e.g. `rank=4` for lora,
      `bottleneck=48` for adapter, `budget=...` for apet).
  """
  if method not in _SETTINGS:
    raise UserError(f"unknown PET method {method!r}; choose one of {sorted(_SETTINGS)}")
  unknown = sorted(set(settings) - set(_SETTINGS[method]))
  if unknown:
    raise UserError(f"{method} has no settings {unknown}; known: {sorted(_SETTINGS[method])}")
  s = {**_SETTINGS[method], **settings}
  c = config
  le, ld, e, m, v = (c.num_encoder_layers, c.num_decoder_layers, c.emb_dim, c.mlp_dim,
                     c.vocab_size)
  j, a = c.num_heads * c.head_dim, len(c.mlp_activations)
  n_att = le + ld + (ld if s.get("cross_attention") else 0)
  if method == "bitfit":
    norms = (2 * le + 1 + 3 * ld + 1) * e if s["norms"] else 0
    return n_att * (3 * j + e) + (le + ld) * (a * m + e) + norms + (v if s["logits"] else 0)
  if method == "lora":
    return n_att * len(s["targets"]) * s["rank"] * (e + j)
  if method == "adapter":
    b = s["bottleneck"]
    return (n_att + le + ld) * (2 * e * b + ((b + e) if s["use_bias"] else 0))
  if method == "ia3":
    return n_att * 2 * j + (le + ld) * m
  if method in ("concat", "prefix"):
    return n_att * (2 * s["length"] * j + (c.num_heads if s["gated"] else 0))
  if method == "prompt":
    return s["length"] * e
  if method == "apet":
    budget = s["budget"]
    if isinstance(budget, str):
      return count_parameters(budget, config)
    if budget is None:
      raise UserError("count_parameters('apet', ...) needs budget=<int or method name>")
    return int(budget)
  # full_finetune: the whole backbone.
  relpos = c.num_heads * c.relative_attention_num_buckets
  attention = 4 * e * j
  mlp = a * e * m + m * e
  encoder = le * (2 * e + attention + mlp) + e + relpos
  decoder = ld * (3 * e + 2 * attention + mlp) + e + relpos
  return v * e + encoder + decoder + e * v
