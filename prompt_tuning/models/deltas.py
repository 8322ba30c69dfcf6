"""Opt-in trainable insertions into T5 modules: the `Δh` of `h_out = f(h_in) + Δh`.

A `DeltaPlan` is a hashable tuple of rules `(path regex, insertion)`.
`T5(config, deltas=plan)` hands the plan down to every `Dense`, `RMSNorm`,
`MultiHeadAttention` and `GatedMlp`. Each of them calls `apply_deltas` at its
sites; that applies, in plan order, every insertion whose regex fully matches
the module's path (e.g. `encoder/layers_0/attention/query`) and which acts at
that site of a module of that kind. An insertion's parameters live under the
module it modifies, in a child named after the insertion
(`encoder/layers_0/attention/query/lora/a`), so a plain T5 of the same config
does not have them.

Module kinds and their sites (value shapes; `context` passed alongside):

  dense      output    `[..., F]` = `x @ kernel`; context `inputs` `[..., I]`
  norm       output    `[..., E]`, the scaled RMS-normalised input
  attention  attended  `[B, Lq, H, D]` float32, the heads' outputs before the
                       out projection; context `query` `[B, Lq, H, D]`,
                       `logits_max` `[B, H, Lq, 1]`, `denominator` `[B, H, Lq]`
                       (the softmax's row max and normaliser)
             output    `[B, Lq, E]`, after the out projection (before the
                       residual add); context `inputs` `[B, Lq, E]`
  mlp        hidden    `[B, L, M]`, the gated activation before `wo`
             output    `[B, L, E]`, after `wo` (before the residual add);
                       context `inputs` `[B, L, E]`

The empty plan (`NO_DELTAS`, the default everywhere) returns at once: the
parameter tree, the traced computation and the compiled program are those of
the plain model. The concrete insertions (ADD, CONCAT, PLUG, LoRA, IA3) live in
`prompt_tuning.methods.apet.ops`; this module only defines the mechanism.
"""
import dataclasses
import functools
import re
from typing import Any, Dict, List, Optional, Tuple

import flax.linen as nn

KINDS = ("dense", "norm", "attention", "mlp")
SITES = {"dense": ("output",), "norm": ("output",), "attention": ("attended", "output"),
         "mlp": ("hidden", "output")}


@dataclasses.dataclass(frozen=True)
class SiteInfo:
  """Static description of a module an insertion attaches to.

  Attributes:
    kind: one of `KINDS`.
    features: width of the module's output (F for dense, E otherwise).
    axis: logical axis name of that width (`joined_kv`, `mlp`, `embed`, `vocab`).
    in_features: width of the module's input (dense only; 0 otherwise).
    in_axis: logical axis name of the input width (dense only).
    num_heads: H (attention only).
    head_dim: D (attention only).
    hidden: M, the inner width (mlp only).
  """
  kind: str
  features: int
  axis: Optional[str] = None
  in_features: int = 0
  in_axis: Optional[str] = None
  num_heads: int = 0
  head_dim: int = 0
  hidden: int = 0


class Insertion:
  """Base of the insertion specs: frozen dataclasses, so plans stay hashable.

  Subclasses define `op` (the operation's name in exports, e.g. `lora`), `name`
  (the child module's name) and implement `site`, `build` and `num_parameters`.
  """
  op: str = ""
  name: str = ""

  def to_dict(self) -> Dict[str, Any]:
    """`{'op': ..., <fields>}`, JSON-ready: how exports and records describe the insertion."""
    d = {"op": type(self).op}
    for field in dataclasses.fields(self):
      value = getattr(self, field.name)
      d[field.name] = list(value) if isinstance(value, tuple) else value
    return d

  def site(self, kind: str) -> Optional[str]:
    """The site this insertion acts at on a module of `kind`, or None if it cannot."""
    raise NotImplementedError

  def build(self, info: SiteInfo, name: str) -> nn.Module:
    """An unbound Flax module called as `module(value, **context) -> value`."""
    raise NotImplementedError

  def num_parameters(self, info: SiteInfo) -> int:
    """How many parameters `build(info)` creates."""
    raise NotImplementedError

  def check(self, path: str, info: SiteInfo) -> None:
    """Raises `UserError` if this insertion cannot attach to the module at `path`."""


@functools.lru_cache(maxsize=None)
def _compiled(pattern: str) -> "re.Pattern[str]":
  return re.compile(pattern)


def path_matches(pattern: str, path: str) -> bool:
  """Whether the regex `pattern` matches all of the module path `path`."""
  return _compiled(pattern).fullmatch(path) is not None


@dataclasses.dataclass(frozen=True)
class DeltaPlan:
  """Ordered rules `(regex over module paths, Insertion)`; empty = the plain model.

  Attributes:
    rules: `(regex, insertion)` pairs, applied in order.
    records: `(file name, JSON text)` pairs a run directory must keep so that eval,
      export and resume rebuild this plan (e.g. APET's `apet_selection.json`); the
      trainer writes them to MODEL_DIR and refuses to resume when they changed. Not
      part of the plan's equality or hash.
  """
  rules: Tuple[Tuple[str, Insertion], ...] = ()
  records: Tuple[Tuple[str, str], ...] = dataclasses.field(default=(), compare=False)

  def __post_init__(self):
    object.__setattr__(self, "rules", tuple((str(r), i) for r, i in self.rules))
    object.__setattr__(self, "records", tuple((str(n), str(t)) for n, t in self.records))

  def __bool__(self) -> bool:
    return bool(self.rules)

  def to_json(self) -> List[Dict[str, Any]]:
    """The rules as JSON, `[{'modules': regex, 'insertion': {op, fields}}]` (exports)."""
    return [{"modules": regex, "insertion": ins.to_dict()} for regex, ins in self.rules]

  def ops(self) -> List[str]:
    """The kinds of insertion the plan makes (`lora`, `add`, ...), sorted."""
    return sorted({type(ins).op for _, ins in self.rules})

  def __add__(self, other: "DeltaPlan") -> "DeltaPlan":
    """Both plans' rules (and records), this one's first (e.g. `lora() + bitfit()`)."""
    return DeltaPlan(self.rules + other.rules, self.records + other.records)

  def matching(self, path: str, kind: str) -> Tuple[Insertion, ...]:
    """Insertions whose regex fully matches `path` and that can act on a `kind` module."""
    return tuple(ins for pattern, ins in self.rules
                 if ins.site(kind) is not None and path_matches(pattern, path))

  def at(self, path: str, kind: str, site: str) -> Tuple[Insertion, ...]:
    """The matching insertions that act at `site`, in plan order."""
    return tuple(ins for ins in self.matching(path, kind) if ins.site(kind) == site)


NO_DELTAS = DeltaPlan()


def apply_deltas(module: nn.Module, site: str, value: Any, info: SiteInfo, **context) -> Any:
  """Applies `module.deltas`' insertions for `module`'s path at `site` to `value`.

  Call from inside the module's compact `__call__`: the insertions' modules
  become children of `module`. Returns `value` itself when nothing matches.
  """
  plan: DeltaPlan = module.deltas
  if not plan.rules:
    return value
  for ins in plan.at("/".join(module.path), info.kind, site):
    value = ins.build(info, name=ins.name)(value, **context)
  return value
