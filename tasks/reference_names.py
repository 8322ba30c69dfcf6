"""The reference code's task names, as aliases of this project's tasks.

google-research/prompt-tuning registers its tasks in `prompt_tuning.data.glue`
and `prompt_tuning.data.super_glue` (its `MIXTURE_OR_TASK_MODULE` values; both
modules exist here and register these names). Its naming:

  taskless_glue_<t>_v200[_examples]        T5's GLUE format without the benchmark
                                           word (`sentence: ...`) -> `glue_<t>`
  glue_<t>_v200_examples                   with it (`sst2 sentence: ...`)
                                           -> `glue_<t>_prefixed`
  taskless_super_glue_<t>_v102[_examples]  -> `super_glue_<t>`
  super_glue_<t>_v102[_examples]           -> `super_glue_<t>_prefixed`
  [taskless_]glue_mnli_and_dev_v200_examples  MNLI trained, matched and
                                           mismatched validation reported

Only the TFDS versions this project reads have aliases (GLUE 2.0.0 = `v200`,
SuperGLUE 1.0.2 = `v102`), and only the tasks it registers (not GLUE's WNLI and
AX, nor the uncorrected `wsc`: `wsc.fixed` is the WSC here). The `_examples`
suffix made the reference write text examples to TensorBoard; here the
`_examples` and plain names are the same task. Metrics are reported under
the alias's own name, as the reference would.
"""
from typing import List

from prompt_tuning.tasks.registry import add_alias, add_alias_mixture

GLUE_VERSION = "v200"
SUPER_GLUE_VERSION = "v102"
# The reference's (TFDS config) name -> ours, where they differ.
_SUPER_GLUE_NAMES = {"wsc.fixed": "wsc"}


def _variants(reference: str, taskless_target: str, prefixed_target: str,
              version: str) -> List[tuple]:
  """(alias, target) pairs of one reference task: taskless and prefixed, with and
  without `_examples`."""
  pairs = []
  for suffix in ("", "_examples"):
    pairs.append((f"taskless_{reference}_{version}{suffix}", taskless_target))
    pairs.append((f"{reference}_{version}{suffix}", prefixed_target))
  return pairs


def register(glue_tasks, super_glue_tasks) -> List[str]:
  """Registers the aliases of the given plain GLUE and SuperGLUE task names; returns them.

  Args:
    glue_tasks: our plain `glue_<t>` names (their `_prefixed` variants exist).
    super_glue_tasks: our plain `super_glue_<t>` names, diagnostics included.
  """
  pairs = []
  for ours in glue_tasks:
    pairs += _variants(ours, ours, f"{ours}_prefixed", GLUE_VERSION)
  ours_to_reference = {v: k for k, v in _SUPER_GLUE_NAMES.items()}
  for ours in super_glue_tasks:
    short = ours[len("super_glue_"):]
    reference = f"super_glue_{ours_to_reference.get(short, short)}"
    pairs += _variants(reference, ours, f"{ours}_prefixed", SUPER_GLUE_VERSION)
  registered = []
  for alias, target in pairs:
    add_alias(alias, target)
    registered.append(alias)
  # MNLI with both dev sets (the reference's `*_mnli_and_dev_*` mixtures). Our
  # glue_mnli validates on the matched set; glue_mnli_mismatched adds the other.
  for prefix in ("taskless_", ""):
    name = f"{prefix}glue_mnli_and_dev_{GLUE_VERSION}_examples"
    add_alias_mixture(name, [f"{prefix}glue_mnli_{GLUE_VERSION}_examples",
                             f"{prefix}glue_mnli_mismatched_{GLUE_VERSION}_examples"])
    registered.append(name)
  return registered
