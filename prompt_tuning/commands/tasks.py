"""`prompt-tuning tasks`: list registered tasks/mixtures, or show examples.

  prompt-tuning tasks                          # every task and mixture
  prompt-tuning tasks list --filter glue       # names containing "glue"
  prompt-tuning tasks show super_glue_rte --split validation -n 3

The reference code's names (`taskless_glue_sst2_v200_examples`, ...) are
listed as `= our_name`: they are aliases of this project's tasks.

`--module M` imports a module registering more tasks (like T5X's
`MIXTURE_OR_TASK_MODULE`); `--gin.local_data_dir.path="'/data'"` reads
official files instead of TFDS.
"""
import argparse
import importlib
from typing import List

from prompt_tuning import checks
from prompt_tuning.errors import UserError, closest


def add_arguments(parser: argparse.ArgumentParser) -> None:
  parser.add_argument("action", nargs="?", default="list", choices=["list", "show"],
                      help="list (default) or show examples of one task or mixture")
  parser.add_argument("name", nargs="?", help="task or mixture name (for show)")
  parser.add_argument("--split", default="validation", help="split to show (default: validation)")
  parser.add_argument("-n", "--num_examples", type=checks.int_flag(1), default=3,
                      help="examples to show")
  parser.add_argument("--filter", default="", help="list only names containing this text")
  parser.add_argument("--module", action="append", default=[],
                      help="extra module(s) to import that register tasks")
  parser.add_argument("--gin_file", action="append", default=[], help="gin file(s) to parse")
  parser.add_argument("--tfds_data_dir", default=None,
                      help="TFDS data directory (as T5X's flag; default: $TFDS_DATA_DIR)")


def _import_tasks(modules: List[str]):
  import prompt_tuning.tasks  # pylint: disable=g-import-not-at-top,unused-import
  for module in modules:
    try:
      importlib.import_module(module)
    except ImportError as e:
      raise UserError(f"cannot import task module {module!r}: {e}") from e


def _parse_gin(files: List[str], bindings: List[str]):
  if not files and not bindings:
    return
  from prompt_tuning import gin_utils  # pylint: disable=g-import-not-at-top
  gin_utils.parse(files, bindings)  # the task configurables are imported


def _lookup(name: str):
  import seqio  # pylint: disable=g-import-not-at-top
  names = list(seqio.TaskRegistry.names()) + list(seqio.MixtureRegistry.names())
  if name not in names:
    raise UserError(f"unknown task or mixture {name!r}.{closest(name, names)} "
                    f"Run 'prompt-tuning tasks' for the list.")
  return seqio.get_mixture_or_task(name)


def list_names(pattern: str = "") -> List[str]:
  """Lines describing every registered mixture and task matching `pattern`."""
  import seqio  # pylint: disable=g-import-not-at-top
  from prompt_tuning.tasks import ALIASES, TASKS  # pylint: disable=g-import-not-at-top
  lines = []
  for name in sorted(seqio.MixtureRegistry.names()):
    if pattern in name and name in ALIASES:
      lines.append(f"{name:34s} mixture = {ALIASES[name]} (reference name)")
    elif pattern in name:
      members = [t.name for t in seqio.get_mixture_or_task(name).tasks]
      lines.append(f"{name:34s} mixture of {len(members)}: {', '.join(members)}")
  for name in sorted(seqio.TaskRegistry.names()):
    if pattern in name and name in ALIASES:
      lines.append(f"{name:34s} = {ALIASES[name]} (reference name)")
    elif pattern in name:
      info = TASKS.get(name)
      splits = ",".join(info.splits) if info else ""
      labels = " | ".join(info.label_names) if info and info.label_names else ""
      kind = "rank" if info and info.variant == "rank" else ("classes: " + labels if labels else "")
      lines.append(f"{name:34s} [{splits}] {kind}".rstrip())
  return lines


def show_examples(name: str, split: str, num_examples: int) -> List[str]:
  """Preprocessed examples of a task (or of each task of a mixture): text and
  token counts of `inputs` and `targets`."""
  import seqio  # pylint: disable=g-import-not-at-top
  from prompt_tuning.data.vocab import check_vocabularies  # pylint: disable=g-import-not-at-top
  provider = _lookup(name)
  tasks = seqio.get_subtasks(provider)
  lines = []
  for task in tasks:
    if split not in task.splits:
      if len(tasks) == 1:
        raise UserError(f"{task.name} has no {split!r} split; use --split with one of "
                        f"{', '.join(task.splits)}")
      lines.append(f"== {task.name}: no {split!r} split (has {', '.join(task.splits)})")
      continue
    lines.append(f"== {task.name} [{split}]")
    check_vocabularies(task)  # before tf.data, which would bury its error in "in user code"
    try:
      ds = task.get_dataset(sequence_length=None, split=split, shuffle=False, num_epochs=1)
      for i, ex in enumerate(ds.take(num_examples).as_numpy_iterator()):
        lines.append(f"-- example {i}")
        for key in ("inputs", "targets"):
          text = ex.get(f"{key}_pretokenized", b"").decode("utf-8")
          lines.append(f"{key} ({len(ex[key])} tokens): {text}")
        extras = {k: v for k, v in ex.items()
                  if k not in ("inputs", "targets", "inputs_pretokenized", "targets_pretokenized")}
        if extras:
          lines.append("extra: " + ", ".join(f"{k}={_short(v)}" for k, v in sorted(extras.items())))
    except UserError:
      raise
    except Exception as e:  # pylint: disable=broad-except
      # TFDS download, vocabulary and file errors are many types; report one line.
      first_line = str(e).strip().splitlines()[0] if str(e).strip() else ""
      raise UserError(f"cannot read {task.name} [{split}]: {type(e).__name__}: {first_line}. "
                      f"Prepare the TFDS data (tfds build), or point DATA_DIR "
                      f"(local_data_dir.path / $PROMPT_TUNING_DATA_DIR) at the official "
                      f"files, and check the vocabulary ($PROMPT_TUNING_VOCAB)") from e
  return lines


def _short(value) -> str:
  text = value.decode("utf-8") if isinstance(value, bytes) else str(value)
  return text if len(text) <= 60 else text[:57] + "..."


def _print(lines: List[str]):
  try:
    print("\n".join(lines))
  except BrokenPipeError:  # e.g. piped into `head`
    pass


def run(args: argparse.Namespace) -> int:
  from prompt_tuning.gin_utils import set_tfds_data_dir  # pylint: disable=g-import-not-at-top
  set_tfds_data_dir(args.tfds_data_dir)
  _import_tasks(args.module)
  _parse_gin(args.gin_file, getattr(args, "gin_bindings", []))
  if args.action == "list":
    if args.name:
      raise UserError("'tasks list' takes no name; use 'tasks list --filter TEXT' "
                      "or 'tasks show NAME'")
    _print(list_names(args.filter))
    return 0
  if not args.name:
    raise UserError("'tasks show' needs a task or mixture name, e.g. "
                    "'prompt-tuning tasks show super_glue_rte'")
  _print(show_examples(args.name, args.split, args.num_examples))
  return 0
