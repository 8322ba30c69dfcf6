"""SeqIO tasks and mixtures; importing this package registers all of them.

Names: `super_glue_<task>`, `glue_<task>` and `<dataset>` (imdb,
rotten_tomatoes, samsum, multi_news, nq_open); `_prefixed` variants keep T5's
benchmark prefix and classification tasks have `_rank` (rank classification)
variants. Mixtures: `super_glue`, `glue`. See docs/tasks.md.

`TASKS` maps each registered name to its `registry.TaskInfo` (variant,
verbalizers, splits); `MIXTURES` maps mixture names to their tasks.
"""
from prompt_tuning.tasks import glue, others, super_glue
from prompt_tuning.tasks.registry import MIXTURES, TASKS, TaskInfo, add_mixture
from prompt_tuning.tasks.sources import local_data_dir

SUPER_GLUE_MIXTURE = "super_glue"
GLUE_MIXTURE = "glue"

__all__ = ["MIXTURES", "TASKS", "TaskInfo", "local_data_dir", "SUPER_GLUE_MIXTURE",
           "GLUE_MIXTURE"]


def _register_all():
  add_mixture(SUPER_GLUE_MIXTURE, super_glue.register())
  add_mixture(GLUE_MIXTURE, glue.register())
  others.register()


_register_all()
