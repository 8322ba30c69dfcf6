"""`prompt-tuning eval --gin_file=... --gin.PROMPT_FILE=...`: metrics of saved prompts."""
from prompt_tuning import gin_utils


def add_arguments(parser) -> None:
  gin_utils.add_gin_arguments(parser)


def run(args) -> int:
  gin_utils.setup_from_args(args)
  from prompt_tuning.train import eval_run
  gin_utils.call(eval_run.evaluate)
  return 0
