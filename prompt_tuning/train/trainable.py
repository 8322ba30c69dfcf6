"""Split of the variable tree into trainable and frozen parts, by regex over paths.

Paths are '/'-joined parameter names without the collection, e.g.
`prompt/prompt` or `encoder/layers_0/attention/query/kernel`. Only `params`
can be trainable; other collections (e.g. XPrompt's `prompt_masks`) are
always frozen. The same split serves prompt tuning (`prompt/.*`), BitFit,
LoRA and adapters: only the patterns change.
"""
import re
from typing import Any, Dict, Sequence, Tuple

import flax
import gin

from prompt_tuning.errors import UserError

Variables = Dict[str, Any]
PARAMS = "params"


def _flat(tree: Variables) -> Dict[str, Any]:
  return flax.traverse_util.flatten_dict(flax.core.unfreeze(tree), sep="/")


def _unflat(flat: Dict[str, Any]) -> Variables:
  return flax.traverse_util.unflatten_dict(flat, sep="/")


@gin.configurable
def trainable_patterns(patterns: Sequence[str] = ("prompt/.*",)) -> Tuple[str, ...]:
  """The gin-bindable list of regexes selecting trainable parameters."""
  if isinstance(patterns, str):
    patterns = (patterns,)
  return tuple(patterns)


def is_trainable(path: str, patterns: Sequence[str]) -> bool:
  return any(re.fullmatch(p, path) for p in patterns)


def split_variables(variables: Variables, patterns: Sequence[str]) -> Tuple[Variables, Variables]:
  """`{'params': ..., other collections}` -> (trainable params, frozen variables).

  The trainable tree holds parameters only (no collection level); the frozen
  tree keeps the collection level.
  """
  params = _flat(variables.get(PARAMS, {}))
  trainable = {k: v for k, v in params.items() if is_trainable(k, patterns)}
  if not trainable:
    sample = sorted(params)[:4]
    raise UserError(f"no parameter matches the trainable patterns {list(patterns)} "
                    f"(parameter paths look like {sample}); fix trainable_patterns.patterns")
  frozen = {k: v for k, v in variables.items() if k != PARAMS}
  frozen[PARAMS] = _unflat({k: v for k, v in params.items() if k not in trainable})
  return _unflat(trainable), frozen


def merge_variables(trainable: Variables, frozen: Variables) -> Variables:
  """Inverse of `split_variables`."""
  params = {**_flat(frozen.get(PARAMS, {})), **_flat(trainable)}
  return {**frozen, PARAMS: _unflat(params)}


def count_parameters(tree: Any) -> int:
  import jax
  return int(sum(x.size for x in jax.tree_util.tree_leaves(tree)))


def check_extras_train(model: Any, trainable: Variables, patterns: Sequence[str]) -> None:
  """Refuses a run whose method extras (e.g. InfoPrompt's `info/` critics) would stay frozen.

  An extra module exists only to be trained with the method; frozen, it keeps
  its random initialization and its loss terms are meaningless. This happens
  when a gin file read later rebinds `trainable_patterns.patterns` (files are
  applied in order, the last binding wins).

  Args:
    model: the run's `T5`.
    trainable: the trainable parameter tree (`split_variables`' first part).
    patterns: the trainable patterns, for the message.
  """
  trained = {path.split("/")[0] for path in _flat(trainable)}
  for name, _ in getattr(model, "extras", ()) or ():
    if name not in trained:
      raise UserError(f"the method's {name}/ parameters match no trainable pattern "
                      f"{list(patterns)}: a gin file read after the method's file rebound "
                      "trainable_patterns.patterns; put the method file last or add "
                      f"--gin.trainable_patterns.patterns=\"{[*patterns, name + '/.*']}\"")
