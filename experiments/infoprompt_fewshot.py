"""Few-shot prompt tuning vs InfoPrompt on the demo backbone (the InfoPrompt claim).

    python experiments/infoprompt_fewshot.py --out /tmp/infoprompt_fewshot [--sizes 16 64 256]
        [--seeds 0 1 2 3 4] [--steps 150] [--eval_period 15]

The paper claims InfoPrompt converges faster and helps most with few examples.
- task: `demo_bare_reverse_train<N>`, the bare task with only its first N training examples;
- both methods: the same 8-token prompt, optimizer (Adafactor, lr 0.3), batch 16, steps and
  seeds; InfoPrompt adds its two losses with the paper's beta=0.1, gamma=0.05, K=32;
- selection on validation, report on test (`demo_grid`); "steps to 90%": the first
  evaluation whose validation exact match reaches 90% of that run's final one.
Writes `OUT/results.json` and the Markdown table `OUT/table.md`.
"""
import argparse
import os
import sys
from typing import Sequence

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import demo_grid  # pylint: disable=g-import-not-at-top,wrong-import-position

from prompt_tuning.demo import tasks  # pylint: disable=wrong-import-position

METHOD_FILES = {
    "prompt_tuning": demo_grid.PLAIN,
    "infoprompt": (*demo_grid.PLAIN, "methods/infoprompt.gin"),
}


def table(results, sizes: Sequence[int]) -> str:
  lines = ["| train examples | method | test exact match (mean ± sd) | steps to 90% (mean ± sd) |",
           "|---|---|---|---|"]
  for size in sizes:
    for method in METHOD_FILES:
      cell = [r for r in results if r["method"] == method and r["train_examples"] == size]
      if cell:
        lines.append(f"| {size} | {method} | "
                     f"{demo_grid.mean_sd([r['test_exact_match'] for r in cell])} | "
                     f"{demo_grid.mean_sd([r['steps_to_90_percent'] for r in cell], 1)} |")
  return "\n".join(lines)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--out", default="/tmp/infoprompt_fewshot")
  parser.add_argument("--sizes", type=int, nargs="+", default=list(tasks.FEW_SHOT_SIZES))
  parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
  parser.add_argument("--steps", type=int, default=150)
  parser.add_argument("--eval_period", type=int, default=15)
  args = parser.parse_args(argv)
  backbone_dir = demo_grid.backbone(args.out)

  def cell(method, size, seed):
    run_dir = os.path.join(args.out, f"{method}_n{size}_seed{seed}")
    return ({"method": method, "train_examples": size, "seed": seed},
            lambda: demo_grid.run_cell(run_dir, backbone_dir,
                                       tasks.few_shot_task_name("reverse", size),
                                       METHOD_FILES[method], (), seed=seed, steps=args.steps,
                                       eval_period=args.eval_period, prompt_length=8))

  results = demo_grid.run_grid([cell(m, n, s) for n in args.sizes for s in args.seeds
                                for m in METHOD_FILES])
  demo_grid.write_outputs(args.out, results, table(results, args.sizes))
  return 0


if __name__ == "__main__":
  sys.exit(main())
