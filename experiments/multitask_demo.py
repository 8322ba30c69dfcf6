"""Multi-task prompts in mixed batches vs one prompt per task, on the demo backbone.

    nice -n 10 python experiments/multitask_demo.py --out /tmp/multitask_demo \
        [--steps_per_task 40] [--seeds 0 1 2 3 4] [--modes add concat]

- tasks: the bare demo tasks `demo_bare_{copy,reverse,sort}` (no instruction word: only the
  prompt tells the frozen backbone which operation is wanted), mixed at equal rates;
- multi-task: one run of `3 * steps_per_task` steps on the mixture with
  `prompts/multitask.gin` (shared 8-token prompt + one per task), batch 16;
- separate: one plain 8-token prompt-tuning run per task of `steps_per_task` steps, batch 16:
  the same total steps and examples;
- both: Adafactor lr 0.3, the final step's prompt (no selection), reported on each task's
  `test` split with the single-task eval (`PROMPT_FILE`): the multi-task run's exported
  `prompts/step_N/<task>.npy` and the separate runs' `prompts/step_N.npy`.
Writes `OUT/results.json` and the Markdown table `OUT/table.md`. Finished cells are reused.
"""
import argparse
import os
import sys

import seqio

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import demo_grid  # pylint: disable=g-import-not-at-top,wrong-import-position

from prompt_tuning import configurables, fs, gin_utils  # pylint: disable=wrong-import-position
from prompt_tuning.demo import experiment, tasks  # pylint: disable=wrong-import-position
from prompt_tuning.io.backbone import load_backbone_config  # pylint: disable=wrong-import-position
from prompt_tuning.train import eval_run, trainer  # pylint: disable=wrong-import-position

OPERATIONS = ("copy", "reverse", "sort")
MIXTURE = "demo_bare_mixture"
PROMPT_LENGTH = 8
BATCH = 16


def register_mixture() -> None:
  if MIXTURE not in seqio.MixtureRegistry.names():
    seqio.MixtureRegistry.add(MIXTURE, [tasks.task_name(op, False) for op in OPERATIONS],
                              default_rate=1.0)


def test_exact_match(backbone_dir: str, task: str, prompt_file: str, out: str,
                     prompt_length: int = PROMPT_LENGTH) -> float:
  config = load_backbone_config(backbone_dir)
  configurables.parse(["prompts/prompt.gin", "runs/prompt_eval.gin"],
                  [*experiment.task_bindings(config, task, backbone_dir, demo_grid.FEATURE_LENGTHS,
                                             prompt_length),
                   f"MODEL_DIR = {out!r}", f"PROMPT_FILE = {prompt_file!r}", "EVAL_SPLIT = 'test'"])
  return gin_utils.call(eval_run.evaluate)[f"{task}/{experiment.METRIC}"]


def train(run_dir: str, backbone_dir: str, name: str, files, bindings, steps: int, seed: int):
  config = load_backbone_config(backbone_dir)
  common = experiment.tuning_bindings(config, name, backbone_dir, demo_grid.FEATURE_LENGTHS,
                                      steps, BATCH, steps, PROMPT_LENGTH, seed)
  configurables.parse(list(files), [*common, f"MODEL_DIR = {run_dir!r}", *bindings])
  return gin_utils.call(trainer.train)


def multitask_cell(out: str, backbone_dir: str, mode: str, steps: int, seed: int):
  run_dir = os.path.join(out, f"multitask_{mode}_seed{seed}")
  done = fs.read_json(os.path.join(run_dir, "result.json"))
  if done is not None:
    return done
  summary = train(run_dir, backbone_dir, MIXTURE, (*demo_grid.PLAIN, "prompts/multitask.gin"),
                  [f"MULTITASK_MODE = {mode!r}"], steps, seed)
  result = {"trainable_parameters": summary["trainable_parameters"],
            "validation": {k: v for k, v in summary["eval_history"][-1].items() if k != "step"}}
  for op in OPERATIONS:
    task = tasks.task_name(op, False)
    # `concat` puts the task prompt after the shared one: twice PROMPT_LENGTH tokens.
    result[op] = test_exact_match(backbone_dir, task, os.path.join(
        run_dir, "prompts", f"step_{steps}", f"{task}.npy"), os.path.join(run_dir, "test", op),
        PROMPT_LENGTH * (2 if mode == "concat" else 1))
  fs.write_json(os.path.join(run_dir, "result.json"), result)
  return result


def separate_cell(out: str, backbone_dir: str, op: str, steps: int, seed: int):
  run_dir = os.path.join(out, f"separate_{op}_seed{seed}")
  done = fs.read_json(os.path.join(run_dir, "result.json"))
  if done is not None:
    return done
  task = tasks.task_name(op, False)
  summary = train(run_dir, backbone_dir, task, demo_grid.PLAIN, [], steps, seed)
  result = {"trainable_parameters": summary["trainable_parameters"],
            op: test_exact_match(backbone_dir, task, os.path.join(
                run_dir, "prompts", f"step_{steps}.npy"), os.path.join(run_dir, "test"))}
  fs.write_json(os.path.join(run_dir, "result.json"), result)
  return result


def table(rows, steps_per_task: int) -> str:
  lines = [f"| arm | total steps (batch {BATCH}) | trainable parameters | "
           + " | ".join(f"{op} test EM" for op in OPERATIONS) + " | mean |",
           "|---|---|---|" + "---|" * (len(OPERATIONS) + 1)]
  for arm, cells in rows.items():
    per_op = [[c[op] for c in cells if op in c] for op in OPERATIONS]
    means = [sum(v) / len(v) for v in per_op]
    params = (cells[0]["trainable_parameters"] if arm.startswith("multitask")
              else sum(c["trainable_parameters"] for c in cells[:len(OPERATIONS)]))
    lines.append(f"| {arm} | {3 * steps_per_task} | {params:,} | "
                 + " | ".join(demo_grid.mean_sd(v) for v in per_op)
                 + f" | {sum(means) / len(means):.3f} |")
  return "\n".join(lines)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--out", default="/tmp/multitask_demo")
  parser.add_argument("--steps_per_task", type=int, default=40)
  parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
  parser.add_argument("--modes", nargs="+", default=["add", "concat"])
  args = parser.parse_args(argv)
  register_mixture()
  backbone_dir = demo_grid.backbone(args.out)
  rows = {}
  for seed in args.seeds:
    for mode in args.modes:
      rows.setdefault(f"multitask ({mode})", []).append(
          multitask_cell(args.out, backbone_dir, mode, 3 * args.steps_per_task, seed))
    for op in OPERATIONS:
      rows.setdefault("separate prompts", []).append(
          separate_cell(args.out, backbone_dir, op, args.steps_per_task, seed))
    print(f"seed {seed} done", file=sys.stderr, flush=True)
  text = table(rows, args.steps_per_task)
  demo_grid.write_outputs(args.out, [{"arm": k, "cells": v} for k, v in rows.items()], text)
  return 0


if __name__ == "__main__":
  sys.exit(main())
