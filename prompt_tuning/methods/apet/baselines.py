"""The PET baselines of Su et al. 2023 on T5 1.1, as gin-configurable `DeltaPlan` factories.

Defaults are the paper's settings, i.e. those of its code (OpenDelta's T5
defaults; `apet_scale.py` in yushengsu-thu/PET_Scaling lists the resulting
counts, which `counts.count_parameters` reproduces: LoRA 229,376 / adapter
803,584 / BitFit 121,216 on T5 1.1 small, 589,824 / 1,807,488 / 270,208 on base):

  BitFit   zero-initialised biases on the self-attention q, k, v, o outputs
           (encoder `attention`, decoder `self_attention`), on the MLP's
           wi_0, wi_1 and wo outputs, a zero shift after every RMS norm
           (the layers' `pre_*_layer_norm`s and the final `encoder_norm`,
           `decoder_norm`: `x / rms(x) · scale + b`), and on `logits_dense`.
  LoRA     rank 8, α 16 (scale 2) on the self-attention query and value.
  Adapter  bottleneck 24, gelu (tanh form), with biases, after the
           self-attention and the MLP of every layer (before the residual add).
  IA3      (Liu et al. 2022) l_k, l_v on every attention incl. cross-attention,
           l_ff on every MLP's inner activation.

`cross_attention=True` adds the decoder's `encoder_decoder_attention` where the
paper leaves it out. `add_deltas`, `concat_deltas` and `plug_deltas` are the
three general operations at any modules (regexes over `t5.delta_sites` paths).
Each method's trainable parameters are `METHOD_PATTERNS[method]`, the list its
`configs/methods/*.gin` binds to `trainable_patterns.patterns`.
"""
from typing import Dict, Sequence, Tuple

import gin

from prompt_tuning.errors import UserError
from prompt_tuning.methods.apet.ops import Adapter, Add, LoRA, Prefix, Scale
from prompt_tuning.models.deltas import DeltaPlan

ENCODER_ATTENTION = r"encoder/layers_\d+/attention"
DECODER_SELF_ATTENTION = r"decoder/layers_\d+/self_attention"
DECODER_CROSS_ATTENTION = r"decoder/layers_\d+/encoder_decoder_attention"
MLP = r"(encoder|decoder)/layers_\d+/mlp"
NORMS = r".*_norm"
LOGITS = r"decoder/logits_dense"

METHOD_PATTERNS: Dict[str, Tuple[str, ...]] = {
    "bitfit": (r".*/bias/bias",),
    "lora": (r".*/lora/(a|b)",),
    "adapter": (r".*/adapter/.*",),
    "ia3": (r".*/ia3/scale",),
    "add": (r".*/bias/bias",),
    "concat": (r".*/prefix/.*",),
    "plug": (r".*/adapter/.*",),
    "apet": (r".*/(bias|prefix|adapter)/.*",),
    "prompt": (r"prompt/.*",),
    "full_finetune": (r".*",),
}


def attention_modules(cross_attention: bool) -> str:
  """Regex of the attention modules: self-attention, plus cross-attention if asked."""
  parts = [ENCODER_ATTENTION, DECODER_SELF_ATTENTION]
  if cross_attention:
    parts.append(DECODER_CROSS_ATTENTION)
  return "(" + "|".join(parts) + ")"


def method_patterns(method: str) -> Tuple[str, ...]:
  """The `trainable_patterns.patterns` of `method`."""
  if method not in METHOD_PATTERNS:
    raise UserError(f"unknown PET method {method!r}; choose one of {sorted(METHOD_PATTERNS)}")
  return METHOD_PATTERNS[method]


@gin.configurable
def bitfit_deltas(cross_attention: bool = False, norms: bool = True,
                  logits: bool = True) -> DeltaPlan:
  """BitFit on T5 1.1 (which has no biases): zero-initialised output biases, see module doc."""
  rules = [(attention_modules(cross_attention) + "/(query|key|value|out)", Add()),
           (MLP + r"/(wi|wi_\d+|wo)", Add())]
  if norms:
    rules.append((NORMS, Add()))
  if logits:
    rules.append((LOGITS, Add()))
  return DeltaPlan(tuple(rules))


@gin.configurable
def lora_deltas(rank: int = 8, alpha: float = 16.0, targets: Sequence[str] = ("query", "value"),
                cross_attention: bool = False) -> DeltaPlan:
  """LoRA (Hu et al. 2022) on the attention projections `targets` (query/key/value/out)."""
  unknown = sorted(set(targets) - {"query", "key", "value", "out"})
  if unknown or not targets:
    raise UserError(f"lora_deltas.targets {list(targets)} must be a non-empty subset of "
                    "query, key, value, out")
  modules = attention_modules(cross_attention) + "/(" + "|".join(targets) + ")"
  return DeltaPlan(((modules, LoRA(rank, alpha)),))


@gin.configurable
def adapter_deltas(bottleneck: int = 24, activation: str = "gelu", use_bias: bool = True,
                   cross_attention: bool = False) -> DeltaPlan:
  """Houlsby-style adapters after the (self-)attention and the MLP of every layer."""
  adapter = Adapter(bottleneck, activation, use_bias)
  return DeltaPlan(((attention_modules(cross_attention), adapter), (MLP, adapter)))


@gin.configurable
def ia3_deltas(cross_attention: bool = True) -> DeltaPlan:
  """IA3 (Liu et al. 2022): rescale keys, values and the MLP's inner activations."""
  return DeltaPlan(((attention_modules(cross_attention) + "/(key|value)", Scale()),
                    (MLP, Scale())))


@gin.configurable
def add_deltas(modules: Sequence[str] = gin.REQUIRED) -> DeltaPlan:
  """ADD (Eq. 4): a zero-initialised vector added to the output of each matched module."""
  return DeltaPlan(tuple((m, Add()) for m in _regexes(modules, "add_deltas")))


@gin.configurable
def concat_deltas(modules: Sequence[str] = (attention_modules(True),), length: int = 8,
                  gated: bool = True) -> DeltaPlan:
  """CONCAT (Eq. 5): `length` key/value prefix vectors on each matched attention module."""
  return DeltaPlan(tuple((m, Prefix(length, gated)) for m in _regexes(modules, "concat_deltas")))


@gin.configurable
def plug_deltas(modules: Sequence[str] = (attention_modules(True), MLP), bottleneck: int = 24,
                activation: str = "gelu") -> DeltaPlan:
  """PLUG (Eq. 6): a bottleneck adapter added to each matched module's output."""
  adapter = Adapter(bottleneck, activation)
  return DeltaPlan(tuple((m, adapter) for m in _regexes(modules, "plug_deltas")))


def _regexes(modules, what: str) -> Tuple[str, ...]:
  if isinstance(modules, str):
    modules = (modules,)
  if not modules:
    raise UserError(f"{what}.modules is empty; give regexes over module paths, e.g. "
                    r"'encoder/layers_\d+/attention/query'")
  return tuple(modules)
