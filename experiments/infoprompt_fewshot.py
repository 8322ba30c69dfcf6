"""Few-shot prompt tuning vs InfoPrompt on the demo backbone (the InfoPrompt claim).

    python experiments/infoprompt_fewshot.py --out /tmp/infoprompt_fewshot [--sizes 16 64 256]
        [--seeds 0 1 2 3 4] [--steps 150] [--eval_period 15]

The paper claims InfoPrompt converges faster and helps most with few examples.
- task: `demo_bare_reverse_train<N>`, the bare task with only its first N training examples;
- both methods: the same 8-token prompt on Adafactor lr 0.3, batch 16, steps and seeds;
  InfoPrompt adds its two losses as `methods/infoprompt.gin` defines them (Eq. 9, beta=0.1,
  gamma=0.05, K=32, label-free θ: the mean LM-head column of the ten digits, the classes of
  the first output token; its critics and Gaussian heads on Adam lr 1e-3);
- selection on validation, report on test (`demo_grid`); "steps to 90%": the first
  evaluation whose validation exact match reaches 90% of that run's final one; the
  InfoPrompt − prompt tuning difference is paired by seed (mean ± its standard error).
Writes `OUT/results.json` and the Markdown table `OUT/table.md`.
"""
import argparse
import os
import sys
from typing import Sequence

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import demo_grid  # pylint: disable=g-import-not-at-top,wrong-import-position

from prompt_tuning.demo import tasks  # pylint: disable=wrong-import-position

# name -> (gin files, bindings)
METHODS = {
    "prompt_tuning": (demo_grid.PLAIN, ()),
    "infoprompt": ((*demo_grid.PLAIN, "methods/infoprompt.gin"),
                   (f"CLASS_LABELS = {list(tasks.LABEL_WORDS)!r}",)),
}
METRICS = (("test_exact_match", 3), ("steps_to_90_percent", 1))


def paired_difference(results, size: int, key: str, digits: int) -> str:
  """InfoPrompt − prompt tuning at `size`, paired by seed: `mean ± standard error`."""
  cell = lambda method: [r for r in results  # noqa: E731
                         if r["method"] == method and r["train_examples"] == size]
  try:
    d = demo_grid.paired_difference(cell("infoprompt"), cell("prompt_tuning"), key)
  except ValueError:  # fewer than two seeds of both so far
    return "–"
  return f"{d['mean']:+.{digits}f} ± {d['se']:.{digits}f}"


def table(results, sizes: Sequence[int]) -> str:
  lines = ["| train examples | method | test exact match (mean ± sd) | steps to 90% (mean ± sd) |",
           "|---|---|---|---|"]
  for size in sizes:
    for method in METHODS:
      cell = [r for r in results if r["method"] == method and r["train_examples"] == size]
      if cell:
        lines.append(f"| {size} | {method} | " + " | ".join(
            demo_grid.mean_sd([r[key] for r in cell], digits) for key, digits in METRICS) + " |")
    lines.append(f"| {size} | InfoPrompt − prompt tuning (paired, ± s.e.) | " + " | ".join(
        paired_difference(results, size, key, digits) for key, digits in METRICS) + " |")
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
                                       *METHODS[method], seed=seed, steps=args.steps,
                                       eval_period=args.eval_period, prompt_length=8))

  results = demo_grid.run_grid([cell(m, n, s) for n in args.sizes for s in args.seeds
                                for m in METHODS])
  demo_grid.write_outputs(args.out, results, table(results, args.sizes))
  return 0


if __name__ == "__main__":
  sys.exit(main())
