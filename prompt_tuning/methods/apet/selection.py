"""APET (Su et al. 2023, Eq. 7): exactly `budget` trainable parameters at random positions.

The candidate positions ("slots") of a T5 1.1 config are every insertion the
three operations can make (`t5.delta_sites` order):

  add     an `Add` on every dense and norm output (q, k, v, o, wi_*, wo,
          logits_dense, every RMS norm): E, J, M or V parameters each;
  concat  a `Prefix` of `prefix_length` key/value vectors on every attention
          (self and cross): 2·P·J + H each;
  plug    an `Adapter` of bottleneck `adapter_bottleneck` on every attention,
          mlp and dense output except logits_dense: 2·F·m + m + F each.

`select(budget, config, seed)` draws, with `numpy.random.default_rng([seed,
budget])`, a random order of each operation's slots, then

  1. fills `concat_share` and `plug_share` of the budget with whole CONCAT and
     PLUG slots, first-fit in that order;
  2. if what is left exceeds all ADD slots together, keeps taking whole
     CONCAT/PLUG slots (one random order) until it does not;
  3. spends the rest on ADD: whole vectors first-fit in random order, then one
     vector restricted to the exact remaining number of random output
     features (`Add(positions=...)`, a `[n]` parameter).

So the trainable tree has exactly `budget` elements by construction: the
element granularity is in the parameter shapes, and the optimizer needs no
update mask. Every slot is the identity at initialisation. Budgets from 1 up to
`capacity(config)` (all slots together) are exact: step 2 cannot fail when
no CONCAT/PLUG slot is larger than all ADD slots together, which holds for
every T5 1.1 size (the ADD slots include the vocabulary-wide logits bias); on a
toy model where it does not, an unplaceable budget is a `UserError`.

The selection is deterministic in `(budget, config, seed, settings)` and
round-trips through JSON (`Selection.to_json` / `Selection.from_json`), which
records the exact positions, so a run directory can reproduce it for eval,
export and resume independently of this code's version.
"""
import collections
import dataclasses
import json
import re
from typing import Dict, List, Optional, Tuple, Union

import gin
import numpy as np

from prompt_tuning.errors import UserError
from prompt_tuning.methods.apet.ops import Adapter, Add, Prefix, insertion_from_dict
from prompt_tuning.models.config import T5Config
from prompt_tuning.models.deltas import DeltaPlan, Insertion
from prompt_tuning.models.t5 import delta_sites

FORMAT = "prompt_tuning.apet_selection/1"
# The selection's record in a run directory (written by the trainer, see `DeltaPlan.records`).
SELECTION_FILE = "apet_selection.json"
OPERATIONS = ("add", "concat", "plug")


@dataclasses.dataclass(frozen=True)
class Settings:
  """Slot shapes and the budget split of APET's selection."""
  prefix_length: int = 8
  adapter_bottleneck: int = 24
  concat_share: float = 1.0 / 3.0
  plug_share: float = 1.0 / 3.0

  def __post_init__(self):
    if self.prefix_length < 1 or self.adapter_bottleneck < 1:
      raise UserError("apet prefix_length and adapter_bottleneck must be >= 1; fix apet_deltas")
    if min(self.concat_share, self.plug_share) < 0 or self.concat_share + self.plug_share > 1:
      raise UserError(f"apet concat_share={self.concat_share} and plug_share={self.plug_share} "
                      "must be >= 0 and sum to <= 1 (ADD takes the rest); fix apet_deltas")


@dataclasses.dataclass(frozen=True)
class Slot:
  """One candidate insertion: operation, module path, spec and its parameter count."""
  op: str
  path: str
  insertion: Insertion
  size: int


def slots(config: T5Config, settings: Settings = Settings()) -> Dict[str, List[Slot]]:
  """Every candidate position of each operation, in model order."""
  out = {op: [] for op in OPERATIONS}
  prefix, adapter = Prefix(settings.prefix_length), Adapter(settings.adapter_bottleneck)
  for path, info in delta_sites(config).items():
    if info.kind in ("dense", "norm"):
      out["add"].append(Slot("add", path, Add(), Add().num_parameters(info)))
    if info.kind == "attention":
      out["concat"].append(Slot("concat", path, prefix, prefix.num_parameters(info)))
    if info.kind != "norm" and path != "decoder/logits_dense":
      out["plug"].append(Slot("plug", path, adapter, adapter.num_parameters(info)))
  return out


def capacity(config: T5Config, settings: Settings = Settings()) -> int:
  """The largest budget `select` can place (all slots together)."""
  return sum(s.size for group in slots(config, settings).values() for s in group)


@dataclasses.dataclass(frozen=True)
class Selection:
  """The outcome of `select`: which insertions go where; `plan()` builds the `DeltaPlan`."""
  budget: int
  seed: int
  settings: Settings
  model_config: T5Config
  entries: Tuple[Tuple[str, str, Insertion], ...]  # (op, module path, insertion), model order

  def num_parameters(self) -> int:
    sites = delta_sites(self.model_config)
    return sum(ins.num_parameters(sites[path]) for _, path, ins in self.entries)

  def counts_by_operation(self) -> Dict[str, int]:
    """Parameters spent on each operation."""
    sites = delta_sites(self.model_config)
    out = collections.Counter({op: 0 for op in OPERATIONS})
    for op, path, ins in self.entries:
      out[op] += ins.num_parameters(sites[path])
    return dict(out)

  def plan(self) -> DeltaPlan:
    """One rule per distinct insertion, its regex the alternation of its exact module paths."""
    paths: Dict[Insertion, List[str]] = {}
    for _, path, ins in self.entries:
      paths.setdefault(ins, []).append(path)
    return DeltaPlan(tuple(("(" + "|".join(re.escape(p) for p in ps) + ")", ins)
                           for ins, ps in paths.items()),
                     records=((SELECTION_FILE, self.to_json()),))

  def to_json(self) -> str:
    return json.dumps({
        "format": FORMAT, "budget": self.budget, "seed": self.seed,
        "settings": dataclasses.asdict(self.settings),
        "model_config": self.model_config.to_dict(),
        "counts_by_operation": self.counts_by_operation(),
        "entries": [{"op": op, "path": path, "insertion": ins.to_dict()}
                    for op, path, ins in self.entries],
    }, indent=1)

  @classmethod
  def from_json(cls, text: str, config: Optional[T5Config] = None,
                source: str = "APET selection") -> "Selection":
    """Parses `to_json` output; checks its count and, if given, that it was made for `config`."""
    try:
      d = json.loads(text)
    except json.JSONDecodeError as e:
      raise UserError(f"{source} is not valid JSON ({e}); delete it to select again") from None
    if not isinstance(d, dict) or d.get("format") != FORMAT:
      raise UserError(f"{source} is not an APET selection (format {FORMAT!r} expected)")
    model_config = T5Config.from_dict(d["model_config"])
    if config is not None and model_config.architecture() != config.architecture():
      raise UserError(f"{source} was made for another model config ({model_config}); use the "
                      "backbone it was made for or select again")
    selection = cls(int(d["budget"]), int(d["seed"]), Settings(**d["settings"]), model_config,
                    tuple((e["op"], e["path"], insertion_from_dict(e["insertion"]))
                          for e in d["entries"]))
    sites = delta_sites(model_config)
    unknown = [p for _, p, _ in selection.entries if p not in sites]
    if unknown:
      raise UserError(f"{source} names modules {unknown[:3]} this model does not have")
    if selection.num_parameters() != selection.budget:
      raise UserError(f"{source} holds {selection.num_parameters()} parameters, not its budget "
                      f"{selection.budget}; delete it to select again")
    return selection


def select(budget: int, config: T5Config, seed: int = 0,
           settings: Settings = Settings()) -> Selection:
  """Random APET positions holding exactly `budget` trainable parameters (see module doc)."""
  if isinstance(budget, bool) or not isinstance(budget, (int, np.integer)) or budget < 1:
    raise UserError(f"APET budget must be a positive number of parameters, got {budget!r}; "
                    "set APET_BUDGET")
  if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
    raise UserError(f"APET seed must be a non-negative integer, got {seed!r}; set APET_SEED")
  budget, seed = int(budget), int(seed)
  pool = slots(config, settings)
  total = sum(s.size for group in pool.values() for s in group)
  if budget > total:
    raise UserError(f"APET budget {budget:,} exceeds the {total:,} parameters this model can "
                    "host (all ADD/CONCAT/PLUG slots); lower APET_BUDGET or raise "
                    "apet_deltas.prefix_length / adapter_bottleneck")
  add_total = sum(s.size for s in pool["add"])
  largest = max(s.size for op in ("concat", "plug") for s in pool[op])
  rng = np.random.default_rng([seed, budget])
  order = {op: [pool[op][i] for i in rng.permutation(len(pool[op]))] for op in OPERATIONS}
  chosen: List[Tuple[Slot, Insertion]] = []
  taken = set()
  left = budget

  def take(slot: Slot, ins: Insertion, size: int) -> None:
    nonlocal left
    chosen.append((slot, ins))
    taken.add((slot.op, slot.path))
    left -= size

  # 1. CONCAT and PLUG shares, whole slots first-fit.
  for op, share in (("concat", settings.concat_share), ("plug", settings.plug_share)):
    room = int(budget * share)
    for slot in order[op]:
      if slot.size <= room and slot.size <= left:
        take(slot, slot.insertion, slot.size)
        room -= slot.size
  # 2. Whatever ADD cannot absorb goes to more whole CONCAT/PLUG slots.
  if left > add_total:
    rest = [s for op in ("concat", "plug") for s in order[op] if (s.op, s.path) not in taken]
    for i in rng.permutation(len(rest)):
      if left <= add_total:
        break
      if rest[i].size <= left:
        take(rest[i], rest[i].insertion, rest[i].size)
    if left > add_total:  # only when some CONCAT/PLUG slot is larger than all ADD slots
      raise UserError(f"APET cannot place exactly {budget:,} parameters with seed {seed} on this "
                      f"model (CONCAT/PLUG slots up to {largest:,}, all ADD slots {add_total:,}); "
                      "try another APET_SEED or lower apet_deltas.prefix_length / "
                      "adapter_bottleneck")
  # 3. ADD: whole vectors, then one restricted to exactly what is left.
  for slot in order["add"]:
    if left == 0:
      break
    if slot.size <= left:
      take(slot, slot.insertion, slot.size)
    else:
      positions = tuple(int(p) for p in np.sort(rng.choice(slot.size, left, replace=False)))
      take(slot, Add(positions=positions), left)
  assert left == 0, left  # guaranteed by the capacity checks above

  rank = {path: i for i, path in enumerate(delta_sites(config))}
  chosen.sort(key=lambda c: (rank[c[0].path], OPERATIONS.index(c[0].op)))
  return Selection(budget, seed, settings, config,
                   tuple((slot.op, slot.path, ins) for slot, ins in chosen))


@gin.configurable
def apet_deltas(model_config: T5Config, budget: Union[int, str, None] = None, seed: int = 0,
                prefix_length: int = 8, adapter_bottleneck: int = 24,
                concat_share: float = 1.0 / 3.0, plug_share: float = 1.0 / 3.0,
                selection_file: Optional[str] = None) -> DeltaPlan:
  """The APET `DeltaPlan` for `model_config` (bind as `build_model.deltas = @apet_deltas`).

  The plan carries its selection as a record (`SELECTION_FILE`), which the
  trainer writes to MODEL_DIR.

  Args:
    model_config: the backbone's config (passed by `build_model`).
    budget: trainable parameters, or a method name (`lora`, `adapter`,
      `bitfit`, `prompt`, ...) meaning that method's count on this model at the
      paper's settings, as in the paper's `--apet_scale`. Optional with a
      `selection_file`; if given there, it must be that file's budget.
    seed: which random positions.
    prefix_length, adapter_bottleneck, concat_share, plug_share: see `Settings`.
    selection_file: a `Selection.to_json` file (e.g. `MODEL_DIR/apet_selection.json`
      of a run); the plan is read from it, checked against the model config,
      instead of selected.
  """
  if isinstance(budget, str):
    from prompt_tuning.methods.apet.counts import count_parameters
    budget = count_parameters(budget, model_config)
  if selection_file:
    import tensorflow as tf  # gfile: local paths and gs://
    if not tf.io.gfile.exists(selection_file):
      raise UserError(f"APET selection file {selection_file} does not exist; fix "
                      "apet_deltas.selection_file or unset it to select from budget and seed")
    with tf.io.gfile.GFile(selection_file) as f:
      selection = Selection.from_json(f.read(), model_config, source=selection_file)
    if budget is not None and budget != selection.budget:
      raise UserError(f"APET selection file {selection_file} holds budget {selection.budget:,}, "
                      f"not APET_BUDGET={budget:,}; unset APET_BUDGET or use the run's own file")
    return selection.plan()
  settings = Settings(prefix_length, adapter_bottleneck, concat_share, plug_share)
  return select(budget, model_config, seed, settings).plan()
