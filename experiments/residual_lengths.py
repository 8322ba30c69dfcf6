"""Residual Prompt Tuning vs prompt tuning across prompt lengths, at one learning-rate search.

    python experiments/residual_lengths.py --out /tmp/residual_lengths [--lengths 1 5 20]
        [--learning_rates 0.03 0.1 0.3] [--seeds 0 1 2 3 4] [--train_examples 16]
        [--steps 150] [--no_paper_init]

The Residual PT paper claims the residual reparameterization matches or beats prompt tuning
with much shorter prompts and is more stable across seeds. On the demo backbone, with the bare
`reverse` task cut to `--train_examples` training examples (the full task saturates at 1.0 for
every method):
- both arms use the run file's optimizer (Adafactor), its dropout and the default initializer
  (uniform [0, 0.5), the reference code's), and run at every `--learning_rates` rate; Residual
  PT has the demo's 32-wide MLP;
- for each (method, length) the rate with the best mean validation exact match over the seeds
  (each run's best-validation step) is selected (`demo_grid.select_learning_rates`), and
  reported on the disjoint `test` split, with the paired-by-seed difference Residual − prompt
  tuning and its standard error (`demo_grid.selected_comparison`);
- unless `--no_paper_init`: prompt tuning with the paper's uniform [-0.5, 0.5] init at the
  rate selected for prompt tuning at each length, against the default init at that rate.
Writes `OUT/results.json` and `OUT/table.md`.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import demo_grid  # pylint: disable=g-import-not-at-top,wrong-import-position

from prompt_tuning.demo import tasks  # pylint: disable=wrong-import-position

METHODS = {
    "prompt_tuning": (demo_grid.PLAIN, ()),
    "residual": ((*demo_grid.PLAIN, "methods/residual.gin"), ("RESIDUAL_BOTTLENECK = 32",)),
}
# Lester et al.'s text: uniform [-0.5, 0.5] (the reference code's default is [0, 0.5)).
PAPER_INIT = {"uniform_paper": (demo_grid.PLAIN, ("uniform.centered = True",))}


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--out", default="/tmp/residual_lengths")
  parser.add_argument("--lengths", type=int, nargs="+", default=[1, 5, 20])
  parser.add_argument("--learning_rates", type=float, nargs="+", default=[0.03, 0.1, 0.3])
  parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
  parser.add_argument("--train_examples", type=int, default=16, choices=tasks.FEW_SHOT_SIZES)
  parser.add_argument("--steps", type=int, default=150)
  parser.add_argument("--eval_period", type=int, default=15)
  parser.add_argument("--no_paper_init", action="store_true",
                      help="skip the uniform [-0.5, 0.5] vs [0, 0.5) comparison")
  args = parser.parse_args(argv)
  backbone_dir = demo_grid.backbone(args.out)
  task = tasks.few_shot_task_name("reverse", args.train_examples)
  grid = lambda methods, lengths, rates: demo_grid.methods_by_length(  # noqa: E731
      args.out, backbone_dir, task, methods, lengths, args.seeds, args.steps, args.eval_period,
      learning_rates=rates)[0]

  results = grid(METHODS, args.lengths, args.learning_rates)
  chosen = demo_grid.select_learning_rates(results)
  _, comparison = demo_grid.selected_comparison(results, "residual", "prompt_tuning",
                                                args.lengths, chosen)
  table = ["Each method at its validation-selected learning rate; test exact match, mean ± sd "
           f"over seeds {args.seeds}; difference paired by seed, ± its standard error.", "",
           comparison, "", "Every learning rate (* selected on validation):", "",
           demo_grid.learning_rate_table(results, list(METHODS), args.lengths)]
  if not args.no_paper_init:
    paper = []
    for length in args.lengths:
      paper += grid(PAPER_INIT, [length], [chosen[("prompt_tuning", length)]])
    results += paper
    both = {**chosen, **{("uniform_paper", n): chosen[("prompt_tuning", n)]
                         for n in args.lengths}}
    _, init_table = demo_grid.selected_comparison(results, "uniform_paper", "prompt_tuning",
                                                  args.lengths, both)
    table += ["", "Prompt tuning's init at its selected rate: uniform [0, 0.5) (prompt_tuning, "
              "the reference code's) vs uniform [-0.5, 0.5] (uniform_paper, the paper's):", "",
              init_table]
  demo_grid.write_outputs(args.out, results, "\n".join(table))
  return 0


if __name__ == "__main__":
  sys.exit(main())
