"""`prompt-tuning train --gin_file=... --gin.KEY=VALUE`: the T5X-style train entry point."""
from prompt_tuning import gin_utils


def add_arguments(parser) -> None:
  gin_utils.add_gin_arguments(parser)


def run(args) -> int:
  gin_utils.setup_from_args(args)
  from prompt_tuning.train import trainer
  gin_utils.call(trainer.train)
  return 0
