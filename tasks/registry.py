"""Validated registration of this project's seqio tasks and mixtures.

Every task is registered in three flavours where they apply:
  `<name>`           the T5 text-to-text format without the benchmark prefix;
  `<name>_prefixed`  the same with T5's benchmark prefix (e.g. `rte ...`);
  `<name>_rank`      rank classification: on eval splits each example becomes
                     one example per verbalizer (`targets` = the label, plus
                     `idx` and `is_correct`), scored by a seqio `score_fn`.
`TASKS` records what tests and `prompt-tuning tasks` need to know about each.
"""
import dataclasses
import functools
import re
from typing import Callable, Dict, List, Optional, Sequence

import seqio

from prompt_tuning.data import vocab
from prompt_tuning.errors import UserError
from prompt_tuning.tasks import metrics, postprocessors
from prompt_tuning.tasks.formats import Formatter
from prompt_tuning.tasks.local_files import LocalFiles
from prompt_tuning.tasks.sources import DatasetFn, TextSource

NAME_PATTERN = re.compile(r"^[a-z][a-z0-9]*(_[a-z0-9]+)*$")
FAMILIES = ("super_glue", "glue", "other")
# Examples-proportional mixing caps each task's rate at this many examples
# (T5's K = 2**19), so the largest tasks do not drown the small ones.
MIXTURE_RATE_CAP = 2 ** 19


@dataclasses.dataclass(frozen=True)
class TaskInfo:
  """What this project knows about one registered task.

  Attributes:
    name: the registered name.
    family: `super_glue`, `glue` or `other`.
    variant: `""`, `prefixed` or `rank`.
    label_names: the verbalizers of a classification task, else None.
    splits: the canonical splits it has.
  """
  name: str
  family: str
  variant: str
  label_names: Optional[Sequence[str]]
  splits: Sequence[str]


TASKS: Dict[str, TaskInfo] = {}
MIXTURES: Dict[str, List[str]] = {}
# Another name of a registered task or mixture (e.g. the reference code's) -> our name.
ALIASES: Dict[str, str] = {}
# name -> the arguments it was registered with, so an alias registers the same task.
_TASK_ARGUMENTS: Dict[str, dict] = {}


def _check_new_name(name: str, family: str):
  if not NAME_PATTERN.match(name):
    raise UserError(f"task name {name!r} is invalid; use lowercase letters, digits and "
                    f"single underscores, starting with a letter")
  if family not in FAMILIES:
    raise UserError(f"task family {family!r} is unknown; use one of {', '.join(FAMILIES)}")
  if family != "other" and not name.startswith(family + "_"):
    raise UserError(f"task name {name!r} must start with {family + '_'!r}")
  if name in seqio.TaskRegistry.names() or name in seqio.MixtureRegistry.names():
    raise UserError(f"task or mixture {name!r} is already registered; registering "
                    f"prompt_tuning.tasks twice (e.g. importlib.reload) is not supported, "
                    f"pick another name for your own task")


def add_task(name: str, family: str, variant: str, source: TextSource,
             postprocess_fn: Callable, metric_fns: Sequence[Callable],
             label_names: Optional[Sequence[str]] = None) -> seqio.Task:
  """Registers one task whose source already yields formatted text.

  Args:
    label_names: the verbalizers of a classification task, for `TASKS`.
  """
  _check_new_name(name, family)
  arguments = dict(
      source=source,
      output_features=vocab.output_features(),
      preprocessors=[seqio.preprocessors.tokenize, seqio.CacheDatasetPlaceholder(),
                     seqio.preprocessors.append_eos_after_trim],
      postprocess_fn=postprocess_fn,
      metric_fns=list(metric_fns))
  task = seqio.TaskRegistry.add(name, **arguments)
  _TASK_ARGUMENTS[name] = arguments
  TASKS[name] = TaskInfo(name, family, variant, tuple(label_names) if label_names else None,
                         tuple(source.splits))
  return task


def _check_alias(alias: str, targets: Sequence[str]) -> None:
  if alias in seqio.TaskRegistry.names() or alias in seqio.MixtureRegistry.names():
    raise UserError(f"task or mixture {alias!r} is already registered; registering "
                    "prompt_tuning.tasks twice (e.g. importlib.reload) is not supported")
  known = set(_TASK_ARGUMENTS) | set(MIXTURES) | set(ALIASES)
  for target in targets:
    if target not in known:
      raise UserError(f"alias {alias!r} names {target!r}, which this project does not register")


def add_alias(alias: str, target: str):
  """Registers `alias` as the same task or mixture as `target` (same data, format, metrics).

  The alias is a task (or mixture) of its own name, so eval metrics are
  reported under the name the user asked for, as T5X would.
  """
  _check_alias(alias, [target])
  ALIASES[alias] = target
  if target in MIXTURES:
    return seqio.MixtureRegistry.add(alias, list(MIXTURES[target]),
                                     default_rate=_mixture_rate(MIXTURES[target]))
  return seqio.TaskRegistry.add(alias, **_TASK_ARGUMENTS[target])


def add_alias_mixture(name: str, task_names: Sequence[str]) -> seqio.Mixture:
  """Registers a mixture of aliases under a reference mixture's name (examples-proportional)."""
  _check_alias(name, task_names)
  ALIASES[name] = " + ".join(ALIASES.get(t, t) for t in task_names)
  return seqio.MixtureRegistry.add(name, list(task_names), default_rate=_mixture_rate(task_names))


def add_task_variants(name: str, family: str, *, splits,
                      make_format: Callable[[Optional[str]], Formatter],
                      prefix: Optional[str], postprocess_fn: Callable,
                      metric_fns: Sequence[Callable], tfds_name: Optional[str] = None,
                      local: Optional[LocalFiles] = None, features=None,
                      label_names: Optional[Sequence[str]] = None,
                      train_fn: Optional[DatasetFn] = None, rank: bool = True) -> List[str]:
  """Registers `name`, `name_prefixed` (when `prefix`) and `name_rank` (when
  the task has `label_names` and `rank`); returns the registered names.

  Args:
    make_format: prefix (or None) -> formatter of raw examples.
    label_names: the verbalizers; targets of the plain variants are these.
  """
  common = dict(tfds_name=tfds_name, local=local, features=features)
  registered = []
  variants = [("", None)] + ([("prefixed", prefix)] if prefix else [])
  for variant, variant_prefix in variants:
    source = TextSource(splits, make_format(variant_prefix), train_fn=train_fn, **common)
    task_name = f"{name}_{variant}" if variant else name
    add_task(task_name, family, variant, source, postprocess_fn, metric_fns, label_names)
    registered.append(task_name)
  if label_names and rank:
    source = TextSource(splits, make_format(None), train_fn=train_fn,
                        label_names=label_names, **common)
    add_task(f"{name}_rank", family, "rank", source, postprocessors.rank(postprocess_fn),
             [metrics.rank_classification(metric_fns)], label_names)
    registered.append(f"{name}_rank")
  return registered


def add_mixture(name: str, task_names: Sequence[str],
                rate_cap: int = MIXTURE_RATE_CAP) -> seqio.Mixture:
  """Registers an examples-proportional mixture (rates capped at `rate_cap`
  train examples). Tasks without a train split only take part in eval."""
  _check_new_name(name, "other")
  missing = [t for t in task_names if t not in seqio.TaskRegistry.names()]
  if missing:
    raise UserError(f"mixture {name!r} names unregistered tasks: {', '.join(missing)}")
  mixture = seqio.MixtureRegistry.add(name, list(task_names),
                                      default_rate=_mixture_rate(task_names, rate_cap))
  MIXTURES[name] = list(task_names)
  return mixture


def _mixture_rate(task_names: Sequence[str], rate_cap: int = MIXTURE_RATE_CAP):
  del task_names  # One rule for every mixture here.
  return functools.partial(seqio.mixing_rate_num_examples, maximum=rate_cap)
