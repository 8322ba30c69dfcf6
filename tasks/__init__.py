"""SeqIO tasks and mixtures; importing this package registers all of them.

Names: `super_glue_<task>`, `glue_<task>` and `<dataset>` (imdb,
rotten_tomatoes, samsum, multi_news, nq_open); `_prefixed` variants keep T5's
benchmark prefix and classification tasks have `_rank` (rank classification)
variants. Mixtures: `super_glue`, `glue`. See docs/tasks.md.

`TASKS` maps each registered name to its `registry.TaskInfo` (variant,
verbalizers, splits); `MIXTURES` maps mixture names to their tasks.
The reference code's names (`taskless_glue_sst2_v200_examples`,
`super_glue_rte_v102_examples`, ...) are registered as aliases
(`reference_names`; `ALIASES` maps each to our name).
"""
from prompt_tuning.tasks import glue, others, reference_names, super_glue
from prompt_tuning.tasks.registry import ALIASES, MIXTURES, TASKS, TaskInfo, add_mixture
from prompt_tuning.tasks.sources import local_data_dir

SUPER_GLUE_MIXTURE = "super_glue"
GLUE_MIXTURE = "glue"

__all__ = ["ALIASES", "MIXTURES", "TASKS", "TaskInfo", "local_data_dir", "SUPER_GLUE_MIXTURE",
           "GLUE_MIXTURE"]


def _register_all():
  super_glue_tasks = super_glue.register()
  add_mixture(SUPER_GLUE_MIXTURE, super_glue_tasks)
  glue.register()
  add_mixture(GLUE_MIXTURE, glue.MIXTURE_TASKS)
  others.register()
  reference_names.register(glue.ALL_TASKS, super_glue_tasks + super_glue.DIAGNOSTICS)


_register_all()
