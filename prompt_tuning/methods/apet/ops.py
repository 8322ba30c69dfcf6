"""The insertion operations of Su et al. 2023 (§5.1) as `Insertion` specs for a `DeltaPlan`.

Each spec is a frozen dataclass (hashable, JSON-serialisable through
`Insertion.to_dict`) that builds a small Flax module; every one is the identity
at initialisation, so a tuned model starts from the frozen model's outputs:

  Add      ADD (Eq. 4): `h + b`, b zero-initialised; on dense, norm, attention
           and mlp outputs. BitFit's bias. `positions` restricts b to some
           output features (a `[len(positions)]` parameter).
  Prefix   CONCAT (Eq. 5): P trainable key/value vectors joined to an
           attention module's keys/values, see `Prefix`.
  Adapter  PLUG (Eq. 6): `h + σ(h W_down + b_down) W_up + b_up`, W_up and b_up
           zero-initialised (Houlsby et al.); on any module's output.
  LoRA     the parallel low-rank plug of Hu et al.: `h + (α/r) · x A B` for a
           dense `h = x W`, A random, B zero-initialised.
  Scale    IA3 (Liu et al. 2022): `h ⊙ l`, l initialised to ones; on dense
           outputs (keys, values) and the mlp's inner activation.

Parameters are float32 whatever the backbone's dtype (they are the trained
ones). Their logical axes follow the module they modify, so they shard like it:
LoRA's A is `(kernel in-axis, None)`, B `(None, kernel out-axis)`; an adapter's
down projection is `(out-axis, None)`, up `(None, out-axis)`; rank and
bottleneck dimensions are replicated.
"""
import dataclasses
from typing import Any, ClassVar, Dict, Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from prompt_tuning.errors import UserError
from prompt_tuning.models.deltas import Insertion, SiteInfo
from prompt_tuning.models.layers import _activation

Array = jax.Array
PARAM_DTYPE = jnp.float32


def _param(module: nn.Module, name: str, init, shape: Tuple[int, ...], axes: Tuple[Any, ...]):
  return module.param(name, nn.with_logical_partitioning(init, axes), shape, PARAM_DTYPE)


# ---- ADD ----

class AddDelta(nn.Module):
  """`value + bias` over the last axis (or over `positions` of it)."""
  axis: Optional[str]
  positions: Optional[Tuple[int, ...]] = None

  @nn.compact
  def __call__(self, value: Array, **_) -> Array:
    """value: `[..., F]` -> `[..., F]`."""
    if self.positions is None:
      bias = _param(self, "bias", nn.initializers.zeros, (value.shape[-1],), (self.axis,))
      return value + bias.astype(value.dtype)
    bias = _param(self, "bias", nn.initializers.zeros, (len(self.positions),), (None,))
    index = jnp.asarray(self.positions, jnp.int32)
    return value.at[..., index].add(bias.astype(value.dtype))


@dataclasses.dataclass(frozen=True)
class Add(Insertion):
  """ADD: a zero-initialised trainable vector added to a module's output.

  Attributes:
    positions: output features that get a trainable value (sorted, unique);
      None: all of them.
    name: the child module's name (parameter `<module>/<name>/bias`).
  """
  positions: Optional[Tuple[int, ...]] = None
  name: str = "bias"
  op: ClassVar[str] = "add"

  def __post_init__(self):
    if self.positions is not None:
      object.__setattr__(self, "positions", tuple(int(p) for p in self.positions))

  def site(self, kind: str) -> Optional[str]:
    return "output"

  def build(self, info: SiteInfo, name: str) -> nn.Module:
    return AddDelta(info.axis, self.positions, name=name)

  def num_parameters(self, info: SiteInfo) -> int:
    return info.features if self.positions is None else len(self.positions)

  def check(self, path: str, info: SiteInfo) -> None:
    if self.positions is None:
      return
    p = self.positions
    if not p or list(p) != sorted(set(p)) or p[0] < 0 or p[-1] >= info.features:
      raise UserError(f"Add.positions at {path} must be sorted unique indices in [0, "
                      f"{info.features}); fix the plan (or its selection JSON)")


# ---- LoRA ----

class LoraDelta(nn.Module):
  """`value + scale · (inputs @ a) @ b` for a dense layer's output."""
  rank: int
  scale: float
  in_axis: Optional[str]
  axis: Optional[str]

  @nn.compact
  def __call__(self, value: Array, inputs: Array, **_) -> Array:
    """value: `[..., F]`, inputs: `[..., I]` (the dense layer's input) -> `[..., F]`."""
    # Kaiming-uniform with a = sqrt(5) (PyTorch/LoRA's default): U(±1/sqrt(fan_in)).
    a_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")
    a = _param(self, "a", a_init, (inputs.shape[-1], self.rank), (self.in_axis, None))
    b = _param(self, "b", nn.initializers.zeros, (self.rank, value.shape[-1]), (None, self.axis))
    low = jnp.einsum("...i,ir->...r", inputs, a.astype(inputs.dtype))
    delta = jnp.einsum("...r,rf->...f", low, b.astype(inputs.dtype)) * self.scale
    return value + delta.astype(value.dtype)


@dataclasses.dataclass(frozen=True)
class LoRA(Insertion):
  """LoRA on a dense layer: `x W + (alpha / rank) · x A B`; B starts at zero.

  Attributes:
    rank: r.
    alpha: α; the update is scaled by α / r.
    name: child name (parameters `<dense>/<name>/{a,b}`).
  """
  rank: int = 8
  alpha: float = 16.0
  name: str = "lora"
  op: ClassVar[str] = "lora"

  def __post_init__(self):
    if int(self.rank) < 1:
      raise UserError(f"LoRA rank must be >= 1, got {self.rank}; fix lora_deltas.rank")

  def site(self, kind: str) -> Optional[str]:
    return "output" if kind == "dense" else None

  def build(self, info: SiteInfo, name: str) -> nn.Module:
    return LoraDelta(self.rank, self.alpha / self.rank, info.in_axis, info.axis, name=name)

  def num_parameters(self, info: SiteInfo) -> int:
    return self.rank * (info.in_features + info.features)


# ---- PLUG ----

class AdapterDelta(nn.Module):
  """`value + up(σ(down(value)))`, a bottleneck on the module's output."""
  bottleneck: int
  activation: str
  use_bias: bool
  axis: Optional[str]

  @nn.compact
  def __call__(self, value: Array, **_) -> Array:
    """value: `[..., F]` -> `[..., F]`."""
    f, m = value.shape[-1], self.bottleneck
    down = _param(self, "down", nn.initializers.normal(0.01), (f, m), (self.axis, None))
    up = _param(self, "up", nn.initializers.zeros, (m, f), (None, self.axis))
    h = jnp.einsum("...f,fm->...m", value, down.astype(value.dtype))
    if self.use_bias:
      h = h + _param(self, "down_bias", nn.initializers.zeros, (m,), (None,)).astype(value.dtype)
    h = jnp.einsum("...m,mf->...f", _activation(self.activation)(h), up.astype(value.dtype))
    if self.use_bias:
      h = h + _param(self, "up_bias", nn.initializers.zeros, (f,), (self.axis,)).astype(value.dtype)
    return value + h


@dataclasses.dataclass(frozen=True)
class Adapter(Insertion):
  """PLUG: a bottleneck adapter added to a module's output (before the residual add).

  Attributes:
    bottleneck: m.
    activation: σ, a name from `prompt_tuning.models.layers` (`gelu` is the
      tanh approximation, HF's `gelu_new`).
    use_bias: biases on both projections (as in Houlsby et al. and OpenDelta).
    name: child name (parameters `<module>/<name>/{down,down_bias,up,up_bias}`).
  """
  bottleneck: int = 24
  activation: str = "gelu"
  use_bias: bool = True
  name: str = "adapter"
  op: ClassVar[str] = "adapter"

  def __post_init__(self):
    if int(self.bottleneck) < 1:
      raise UserError(f"adapter bottleneck must be >= 1, got {self.bottleneck}; "
                      "fix adapter_deltas.bottleneck")
    _activation(self.activation)

  def site(self, kind: str) -> Optional[str]:
    return "output"

  def build(self, info: SiteInfo, name: str) -> nn.Module:
    return AdapterDelta(self.bottleneck, self.activation, self.use_bias, info.axis, name=name)

  def num_parameters(self, info: SiteInfo) -> int:
    f, m = info.features, self.bottleneck
    return 2 * f * m + ((m + f) if self.use_bias else 0)


# ---- IA3 ----

class ScaleDelta(nn.Module):
  """`value ⊙ scale` over the last axis, scale initialised to ones."""
  axis: Optional[str]

  @nn.compact
  def __call__(self, value: Array, **_) -> Array:
    scale = _param(self, "scale", nn.initializers.ones, (value.shape[-1],), (self.axis,))
    return value * scale.astype(value.dtype)


@dataclasses.dataclass(frozen=True)
class Scale(Insertion):
  """IA3: a learned vector rescaling a dense output (keys, values) or the mlp's inner activation.

  Attributes:
    name: child name (parameter `<module>/<name>/scale`).
  """
  name: str = "ia3"
  op: ClassVar[str] = "scale"

  def site(self, kind: str) -> Optional[str]:
    return {"dense": "output", "mlp": "hidden"}.get(kind)

  def build(self, info: SiteInfo, name: str) -> nn.Module:
    return ScaleDelta("mlp" if info.kind == "mlp" else info.axis, name=name)

  def num_parameters(self, info: SiteInfo) -> int:
    return info.hidden if info.kind == "mlp" else info.features


# ---- CONCAT ----

class PrefixDelta(nn.Module):
  """Attention over `length` trainable key/value vectors, combined with the module's own."""
  length: int
  gated: bool
  stddev: float

  @nn.compact
  def __call__(self, attended: Array, query: Array, logits_max: Array, denominator: Array,
               **_) -> Array:
    """attended, query: `[B, Lq, H, D]`; logits_max `[B, H, Lq, 1]`, denominator `[B, H, Lq]`."""
    heads, dim = query.shape[-2:]
    init = nn.initializers.normal(self.stddev)
    axes = (None, "heads", "kv")
    key = _param(self, "key", init, (self.length, heads, dim), axes)
    value = _param(self, "value", init, (self.length, heads, dim), axes)
    scores = jnp.einsum("bqhd,phd->bhqp", query, key.astype(query.dtype),
                        preferred_element_type=jnp.float32)
    weights = jax.nn.softmax(scores, axis=-1)
    prefix_out = jnp.einsum("bhqp,phd->bqhd", weights, value.astype(jnp.float32))
    if self.gated:
      gate = _param(self, "gate", nn.initializers.zeros, (heads,), ("heads",))
      return attended + gate[:, None] * prefix_out.astype(attended.dtype)
    # One softmax over [prefix; keys]: mix by each part's share of the normaliser.
    own = logits_max[..., 0] + jnp.log(denominator)                 # [B, H, Lq]
    share = jax.nn.sigmoid(own - jax.nn.logsumexp(scores, axis=-1))  # own keys' share
    share = jnp.swapaxes(share, 1, 2)[..., None]                     # [B, Lq, H, 1]
    return share * attended + (1.0 - share) * prefix_out.astype(attended.dtype)


@dataclasses.dataclass(frozen=True)
class Prefix(Insertion):
  """CONCAT: `length` trainable key/value vectors joined to an attention module's keys/values.

  A plain join (`gated=False`, prefix-tuning's form: one softmax over
  `[prefix; keys]`) changes the output at initialisation, since the prefix
  takes a share of every softmax. The default, `gated=True`, is
  LLaMA-Adapter's zero-init attention: the prefix block of the attention
  scores is normalised on its own and scaled by a per-head gate g, zero at
  initialisation, so `out = attn(q, K, V) + g_h · softmax(q P_kᵀ) P_v` is
  exactly the frozen output at step 0 and g learns how much to attend to the
  prefix. The prefix is a parameter, so decoding with a KV cache needs nothing
  extra.

  Attributes:
    length: number of prefix vectors P.
    gated: the zero-init gate (identity at init) or the plain joint softmax.
    stddev: initial scale of the key and value vectors (normal).
    name: child name (parameters `<attention>/<name>/{key,value[,gate]}`).
  """
  length: int = 8
  gated: bool = True
  stddev: float = 1.0
  name: str = "prefix"
  op: ClassVar[str] = "prefix"

  def __post_init__(self):
    if int(self.length) < 1:
      raise UserError(f"prefix length must be >= 1, got {self.length}; fix concat_deltas.length")

  def site(self, kind: str) -> Optional[str]:
    return "attended" if kind == "attention" else None

  def build(self, info: SiteInfo, name: str) -> nn.Module:
    return PrefixDelta(self.length, self.gated, self.stddev, name=name)

  def num_parameters(self, info: SiteInfo) -> int:
    return 2 * self.length * info.num_heads * info.head_dim + (info.num_heads if self.gated else 0)


# ---- serialisation ----

OPS: Dict[str, type] = {cls.op: cls for cls in (Add, LoRA, Adapter, Scale, Prefix)}


def insertion_from_dict(d: Dict[str, Any]) -> Insertion:
  d = dict(d)
  op = d.pop("op", None)
  if op not in OPS:
    raise UserError(f"unknown delta operation {op!r}; known: {sorted(OPS)}")
  cls = OPS[op]
  known = {f.name for f in dataclasses.fields(cls)}
  if set(d) - known:
    raise UserError(f"{op} has no fields {sorted(set(d) - known)}; known: {sorted(known)}")
  if d.get("positions") is not None:
    d["positions"] = tuple(d["positions"])
  return cls(**d)
