"""XPrompt's claim on the demo backbone: a pruned sub-prompt vs the full prompt, held out.

    python experiments/xprompt_demo.py --out /tmp/xprompt_demo [--seeds 0 1 2 3 4]
        [--train_examples 64] [--prompt_length 20] [--steps 150]
        [--kept 0.75 0.5 0.25 0.1]

XPrompt (Ma et al. 2022) claims that a sub-prompt with most of its values pruned
(hierarchical token/piece pruning by |∂L/∂mask|, then rewinding) matches or beats
the full prompt. Per seed, on the bare `reverse` task cut to `--train_examples`:

1. `xprompt`: the full method (`prompt-tuning xprompt`, strict-improvement search
   over 10%..90% token then piece ratios, chosen on validation, rewound and
   retrained); the stage-1 prompt (best validation step) is the full-prompt
   baseline.
2. `forced`: the metric against the fraction of values kept, with retraining:
   for each `--kept` fraction f, the same stage-1 prompt is pruned to its most
   important `f·P` tokens (one token round, accepted whatever validation says)
   and rewound and retrained as in step 1. `f = 1` prunes nothing: the full
   prompt rewound and retrained for the same extra steps, the control at equal
   training budget (XPrompt's final prompt has trained stage 1 + stage 3 steps).

Every number reported is on the `test` split, which chose nothing (the
validation metric chose the best steps and XPrompt's ratio). Writes
`OUT/results.json` and `OUT/table.md`.
"""
import argparse
import os
import shutil
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import demo_grid  # pylint: disable=g-import-not-at-top,wrong-import-position

from prompt_tuning import configurables, fs, gin_utils  # pylint: disable=wrong-import-position
from prompt_tuning.demo import experiment, tasks  # pylint: disable=wrong-import-position
from prompt_tuning.io.backbone import load_backbone_config  # pylint: disable=wrong-import-position
from prompt_tuning.methods.xprompt.driver import run_xprompt  # pylint: disable=wrong-import-position
from prompt_tuning.run_dir import XPromptDir  # pylint: disable=wrong-import-position

FILES = (*demo_grid.PLAIN, "methods/xprompt.gin", "runs/xprompt.gin")


def run_one(run_dir, backbone_dir, task, args, seed, bindings):
  """One XPrompt run (resumable: finished stages are skipped); its summary."""
  config = load_backbone_config(backbone_dir)
  key = f"{task}/{experiment.METRIC}"
  # The trainer wants the prompt within the input length (lengths only pad: results do not
  # depend on them).
  lengths = {"inputs": max(16, args.prompt_length), "targets": 8}
  common = experiment.tuning_bindings(config, task, backbone_dir, lengths, args.steps, 16,
                                      args.eval_period, args.prompt_length, seed)
  configurables.parse(list(FILES), [*common, f"MODEL_DIR = {run_dir!r}",
                                f"train.early_stopping_metric = {key!r}",
                                f"XPROMPT_PIECES = {args.pieces}", "XPROMPT_TEST_SPLIT = 'test'",
                                *bindings])
  return gin_utils.call(run_xprompt)


def summarize(summary, label, seed, kept_target=None):
  held_out = summary["held_out_stages"]
  return {"run": label, "seed": seed, "kept_target": kept_target,
          "kept_fraction": summary["kept_parameters"] / summary["prompt_parameters"],
          "chosen": summary["chosen"],
          "test_full_prompt": held_out["prompt_tuning"],
          "test_pruned_unretrained": held_out["pruning"],
          "test_final": held_out["rewinding"],
          "validation_stages": summary["stages"]}


def table(results, kept) -> str:
  def cell(rows, field):
    return demo_grid.mean_sd([r[field] for r in rows]) if rows else "-"
  full = [r for r in results if r["run"] == "xprompt"]
  lines = ["| prompt | values kept (mean) | test exact match (mean ± sd) |", "|---|---|---|",
           f"| full prompt (stage 1, best validation step) | 1.00 | {cell(full, 'test_full_prompt')} |",
           f"| XPrompt, ratio chosen on validation | "
           f"{sum(r['kept_fraction'] for r in full) / max(len(full), 1):.2f} | "
           f"{cell(full, 'test_final')} |"]
  for fraction in kept:
    rows = [r for r in results if r["run"] == "forced" and r["kept_target"] == fraction]
    name = ("full prompt, rewound + retrained (equal budget)" if fraction == 1
            else f"top {fraction:.0%} of tokens, rewound + retrained")
    lines.append(f"| {name} | "
                 f"{sum(r['kept_fraction'] for r in rows) / max(len(rows), 1):.2f} | "
                 f"{cell(rows, 'test_final')} |")
    if fraction < 1:
      lines.append(f"| top {fraction:.0%} of tokens, not retrained | | "
                   f"{cell(rows, 'test_pruned_unretrained')} |")
  return "\n".join(lines)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--out", default="/tmp/xprompt_demo")
  parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
  parser.add_argument("--train_examples", type=int, default=64, choices=tasks.FEW_SHOT_SIZES)
  parser.add_argument("--prompt_length", type=int, default=20)
  parser.add_argument("--pieces", type=int, default=8)
  parser.add_argument("--steps", type=int, default=150)
  parser.add_argument("--eval_period", type=int, default=15)
  parser.add_argument("--kept", type=float, nargs="+", default=[1.0, 0.5, 0.25])
  args = parser.parse_args(argv)
  backbone_dir = demo_grid.backbone(args.out)
  task = tasks.few_shot_task_name("reverse", args.train_examples)
  results = []
  for seed in args.seeds:
    full_dir = os.path.join(args.out, f"xprompt_seed{seed}")
    summary = run_one(full_dir, backbone_dir, task, args, seed, [])
    results.append(summarize(summary, "xprompt", seed))
    print(f"seed {seed} xprompt: {results[-1]}", file=sys.stderr, flush=True)
    for fraction in args.kept:
      forced_dir = os.path.join(args.out, f"forced{fraction}_seed{seed}")
      stage1 = XPromptDir(forced_dir).stage1.root
      if not os.path.exists(stage1):  # the same stage-1 prompt: the driver skips stage 1
        shutil.copytree(XPromptDir(full_dir).stage1.root, stage1)
      # One token round at 1 - f, taken whatever validation says (tolerance 1 on [0, 1] EM).
      summary = run_one(forced_dir, backbone_dir, task, args, seed,
                        [f"XPROMPT_TOKEN_RATIOS = [{1 - fraction:.4f}]",
                         "XPROMPT_PIECE_RATIOS = []", "XPROMPT_TOLERANCE = 1.0"])
      results.append(summarize(summary, "forced", seed, fraction))
      print(f"seed {seed} kept {fraction}: {results[-1]}", file=sys.stderr, flush=True)
    fs.write_json(os.path.join(args.out, "results.json"), results)
  demo_grid.write_outputs(args.out, results, table(results, args.kept))
  return 0


if __name__ == "__main__":
  sys.exit(main())
