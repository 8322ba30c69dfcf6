"""T5 1.1 model configuration: a frozen dataclass that round-trips through JSON.

The backbone folder written by `prompt-tuning convert` stores this as
`config.json`, which is what makes a converted checkpoint self-describing.
"""
import dataclasses
import json
from typing import Any, Dict, Optional, Tuple

import gin

from prompt_tuning.errors import UserError


@gin.configurable
@dataclasses.dataclass(frozen=True)
class T5Config:
  """Shapes and numerics of a T5 1.1 encoder-decoder (flaxformer naming)."""
  vocab_size: int = 32128
  emb_dim: int = 512
  num_heads: int = 6
  head_dim: int = 64
  mlp_dim: int = 1024
  num_encoder_layers: int = 8
  num_decoder_layers: int = 8
  relative_attention_num_buckets: int = 32
  relative_attention_max_distance: int = 128
  dropout_rate: float = 0.0
  layer_norm_epsilon: float = 1e-6
  mlp_activations: Tuple[str, ...] = ("gelu", "linear")
  # Activation (compute) dtype and parameter (storage) dtype, as names.
  dtype: str = "float32"
  param_dtype: str = "float32"
  # Rematerialize each layer in the backward pass (saves activation memory on
  # big models; gradients still flow only to trainable parameters): one of
  # REMAT_POLICIES, or False ('none') / True ('full').
  remat: Any = False

  def __post_init__(self):
    remat_policy(self)  # a bad name fails where it is bound, not at the first step
    for field, macro in (("dtype", "ACTIVATION_DTYPE"), ("param_dtype", None)):
      value = getattr(self, field)
      if value not in DTYPES:
        name = f"{macro} (T5Config.{field})" if macro else f"T5Config.{field}"
        raise UserError(f"{name} = {value!r} is not one of {list(DTYPES)}; e.g. "
                        f"--gin.{macro or 'T5Config.' + field}=\"'float32'\"")

  def to_dict(self) -> Dict[str, Any]:
    d = dataclasses.asdict(self)
    d["mlp_activations"] = list(self.mlp_activations)
    return d

  def architecture(self) -> Dict[str, Any]:
    """`to_dict()` without the run's choices (`RUN_CHOICES`): what must match between the
    run that trained new parameters and the one that loads them."""
    return architecture_of(self.to_dict())

  @classmethod
  def from_dict(cls, d: Dict[str, Any]) -> "T5Config":
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - known)
    if unknown:
      raise UserError(f"model config has unknown fields {unknown}; known fields: {sorted(known)}")
    d = dict(d)
    if "mlp_activations" in d:
      d["mlp_activations"] = tuple(d["mlp_activations"])
    return cls(**d)

  def replace(self, **kwargs) -> "T5Config":
    return dataclasses.replace(self, **kwargs)

  def to_json(self) -> str:
    return json.dumps(self.to_dict(), indent=2, sort_keys=True)

  @classmethod
  def from_json(cls, text: str, source: Optional[str] = None) -> "T5Config":
    try:
      return cls.from_dict(json.loads(text))
    except json.JSONDecodeError as e:
      raise UserError(f"model config {source or ''} is not valid JSON ({e}); "
                      "re-run `prompt-tuning convert` to rewrite it") from None


# Compute and storage dtypes a T5 can use (names, as gin binds them).
DTYPES = ("float32", "bfloat16", "float16")


# Fields each run chooses (dropout while tuning, none in eval; remat; the compute dtype), not
# properties of the backbone: exports and selections made by one run load in another that
# chooses differently.
RUN_CHOICES = ("dropout_rate", "remat", "dtype")


def architecture_of(config_dict: Dict[str, Any]) -> Dict[str, Any]:
  """A stored `T5Config.to_dict()` without `RUN_CHOICES` (older files included them)."""
  return {k: v for k, v in config_dict.items() if k not in RUN_CHOICES}


# What each layer keeps for the backward pass (`jax.checkpoint_policies`); the rest of its
# activations are recomputed there. 'dots' keeps the weight matmuls' outputs
# (q/k/v/out, MLP in/out) and recomputes the attention products, norms and activations.
REMAT_POLICIES = {
    "none": None,  # no remat: keep everything (fastest, most memory)
    "full": "nothing_saveable",  # keep only each layer's input
    "dots": "dots_with_no_batch_dims_saveable",
    "dots_saveable": "dots_saveable",  # also keep the attention products
}


def remat_policy(config: "T5Config") -> str:
  """The name (a key of `REMAT_POLICIES`) of `config.remat`; `UserError` if unknown."""
  value = config.remat
  if isinstance(value, bool) or value is None:
    return "full" if value else "none"
  if value not in REMAT_POLICIES:
    raise UserError(f"T5Config.remat = {value!r} is not a remat policy; use one of "
                    f"{sorted(REMAT_POLICIES)} (or True = 'full', False = 'none')")
  return value


# Published T5 1.1 dimensions (the LM-adapted checkpoints use the same shapes).
T5_1_1_SIZES: Dict[str, Dict[str, int]] = {
    "small": dict(emb_dim=512, num_heads=6, head_dim=64, mlp_dim=1024,
                  num_encoder_layers=8, num_decoder_layers=8),
    "base": dict(emb_dim=768, num_heads=12, head_dim=64, mlp_dim=2048,
                 num_encoder_layers=12, num_decoder_layers=12),
    "large": dict(emb_dim=1024, num_heads=16, head_dim=64, mlp_dim=2816,
                  num_encoder_layers=24, num_decoder_layers=24),
    "xl": dict(emb_dim=2048, num_heads=32, head_dim=64, mlp_dim=5120,
               num_encoder_layers=24, num_decoder_layers=24),
    "xxl": dict(emb_dim=4096, num_heads=64, head_dim=64, mlp_dim=10240,
                num_encoder_layers=24, num_decoder_layers=24),
}


@gin.configurable
def t5_1_1_config(size: str = gin.REQUIRED, **overrides) -> T5Config:
  """The published T5 1.1 config of `size` (small/base/large/xl/xxl)."""
  if size not in T5_1_1_SIZES:
    raise UserError(f"unknown T5 1.1 size {size!r}; choose one of {sorted(T5_1_1_SIZES)}")
  return T5Config(**{**T5_1_1_SIZES[size], **overrides})
