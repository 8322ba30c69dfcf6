"""Residual Prompt Tuning vs prompt tuning across prompt lengths, and prompt initializers.

    python experiments/residual_lengths.py --out /tmp/residual_lengths [--lengths 1 2 5 10 20]
        [--seeds 0 1 2 3 4] [--train_examples 16] [--steps 150]

The Residual PT paper claims the residual reparameterization matches or beats prompt tuning
with much shorter prompts and is more stable across seeds; Lester et al. compare prompt
initializers. On the demo backbone, with the bare `reverse` task cut to `--train_examples`
training examples (the full task saturates at 1.0 for every method):
- methods: prompt tuning (sampled-vocab init), Residual PT (bottleneck 32, lr 0.1 as in the
  demo), and prompt tuning with the uniform [-0.5, 0.5] init;
- same steps, batch 16 and seeds for all; selection on validation, report on test
  (`demo_grid`). Class-label init needs a task with label words and is not in this grid.
Writes `OUT/results.json` and `OUT/table.md` (test exact match, mean ± sd over seeds).
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import demo_grid  # pylint: disable=g-import-not-at-top,wrong-import-position

from prompt_tuning.demo import tasks  # pylint: disable=wrong-import-position

METHODS = {
    "prompt_tuning": (demo_grid.PLAIN, ()),
    "residual": ((*demo_grid.PLAIN, "methods/residual.gin"),
                 ("RESIDUAL_BOTTLENECK = 32", "adafactor.learning_rate = 0.1")),
    "uniform_init": ((*demo_grid.PLAIN, "prompts/from_uniform.gin"), ()),
}


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--out", default="/tmp/residual_lengths")
  parser.add_argument("--lengths", type=int, nargs="+", default=[1, 2, 5, 10, 20])
  parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
  parser.add_argument("--train_examples", type=int, default=16, choices=tasks.FEW_SHOT_SIZES)
  parser.add_argument("--steps", type=int, default=150)
  parser.add_argument("--eval_period", type=int, default=15)
  args = parser.parse_args(argv)
  backbone_dir = demo_grid.backbone(args.out)
  task = tasks.few_shot_task_name("reverse", args.train_examples)

  results, table = demo_grid.methods_by_length(args.out, backbone_dir, task, METHODS,
                                                args.lengths, args.seeds, args.steps,
                                                args.eval_period)
  demo_grid.write_outputs(args.out, results, table)
  return 0


if __name__ == "__main__":
  sys.exit(main())
