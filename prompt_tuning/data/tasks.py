"""The reference code's `MIXTURE_OR_TASK_MODULE = 'prompt_tuning.data.tasks'` (all its tasks).

Importing it registers every task of this project (`prompt_tuning.tasks`),
the reference's GLUE and SuperGLUE names among them as aliases; see
`prompt_tuning.tasks.reference_names`.
"""
import prompt_tuning.tasks  # noqa: F401  pylint: disable=unused-import
