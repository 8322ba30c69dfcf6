"""`prompt-tuning sweep [--gin.X=Y]`: PET methods at parameter budgets (see configs/runs/sweep.gin)."""
from prompt_tuning import configurables, gin_utils

SWEEP_GIN = "runs/sweep.gin"


def add_arguments(parser) -> None:
  gin_utils.add_gin_arguments(parser)


def run(args) -> int:
  args.gin_file = [SWEEP_GIN, *args.gin_file]
  configurables.setup_from_args(args)
  from prompt_tuning.methods.apet import sweep
  gin_utils.call(sweep.run_sweep)
  return 0
