"""`prompt-tuning infer --gin_file=... --gin.PROMPT_FILE=...`: predictions of a saved prompt."""
from prompt_tuning import gin_utils


def add_arguments(parser) -> None:
  gin_utils.add_gin_arguments(parser)


def run(args) -> int:
  gin_utils.setup_from_args(args)
  from prompt_tuning.train import eval_run
  gin_utils.call(eval_run.infer)
  return 0
