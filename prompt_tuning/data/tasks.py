"""The reference code's `MIXTURE_OR_TASK_MODULE = 'prompt_tuning.data.tasks'` (all its tasks).

Importing it registers every task of this project (`prompt_tuning.tasks`),
the reference's GLUE and SuperGLUE names among them as aliases; see
`prompt_tuning.tasks.reference_names`.
"""
# Up a layer on purpose: the reference code names this module (`prompt_tuning.data.*`), and what
# it must register lives in `prompt_tuning.tasks`, above `data/`.
import prompt_tuning.tasks  # noqa: F401  pylint: disable=unused-import
