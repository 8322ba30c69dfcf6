"""`prompt-tuning demo [--gin.X=Y]`: the self-contained CPU demo (see configs/runs/demo.gin)."""
from prompt_tuning import configurables, gin_utils

DEMO_GIN = "runs/demo.gin"


def add_arguments(parser) -> None:
  gin_utils.add_gin_arguments(parser)


def run(args) -> int:
  args.gin_file = [DEMO_GIN, *args.gin_file]
  configurables.setup_from_args(args)
  from prompt_tuning.demo import experiment
  summary = gin_utils.call(experiment.run_demo)
  tuned = [r["held_out_exact_match"] for r in summary["methods"] if "skipped" not in r]
  return 0 if tuned else 1
