"""Few-shot prompt tuning vs InfoPrompt on the demo backbone (issue: InfoPrompt, "Show it").

    python experiments/infoprompt_fewshot.py --out /tmp/infoprompt_fewshot [--sizes 16 64 256]
        [--seeds 0 1 2 3 4] [--steps 150] [--eval_period 15]

Protocol (the paper claims InfoPrompt converges faster and helps most with few examples):
- backbone: the demo's tiny T5 1.1 pretrained on `copy:`/`reverse:`/`sort:` (reused from
  `OUT/backbone`, or pretrained once as `prompt-tuning demo` does);
- task: `demo_bare_reverse_train<N>`, the bare task with only its first N training examples;
- both methods: the same prompt (8 tokens), optimizer (Adafactor, lr 0.3), batch, steps and
  seeds; InfoPrompt adds its two losses with the paper's beta=0.1, gamma=0.05, K=32;
- selection on the validation split (the best-by-validation prompt, `prompts/best.npy`);
  the reported number is exact match on the disjoint `test` split, which chose nothing;
- "steps to 90%": the first evaluation step whose validation exact match reaches 90% of
  that run's final validation exact match.
Every run is an ordinary `trainer.train` run; a finished run (its `result.json`) is not
recomputed, so the script resumes. It prints and writes `OUT/results.json` and a Markdown
table `OUT/table.md`.
"""
import argparse
import json
import os
import statistics
import sys
import time
from typing import Any, Dict, List, Sequence

from prompt_tuning import fs, gin_utils
from prompt_tuning.demo import experiment, tasks
from prompt_tuning.io.backbone import load_backbone_config
from prompt_tuning.train import eval_run, trainer

METHOD_FILES = {
    "prompt_tuning": ("runs/prompt_finetune.gin", "prompts/prompt.gin"),
    "infoprompt": ("runs/prompt_finetune.gin", "prompts/prompt.gin", "methods/infoprompt.gin"),
}
FEATURE_LENGTHS = {"inputs": 16, "targets": 8}
PROMPT_LENGTH = 8
BATCH_SIZE = 16


def steps_to_fraction(history: Sequence[Dict[str, float]], key: str, fraction: float = 0.9) -> int:
  """First step whose `key` reaches `fraction` of the last evaluation's value."""
  final = history[-1][key]
  return next(h["step"] for h in history if h[key] >= fraction * final)


def run_cell(out: str, backbone_dir: str, method: str, size: int, seed: int, steps: int,
             eval_period: int) -> Dict[str, Any]:
  """One (method, N, seed) run and its test metric; cached in `<run>/result.json`."""
  run_dir = os.path.join(out, f"{method}_n{size}_seed{seed}")
  done = fs.read_json(os.path.join(run_dir, "result.json"))
  if done is not None:
    return done
  task = tasks.few_shot_task_name("reverse", size)
  key = f"{task}/{experiment.METRIC}"
  config = load_backbone_config(backbone_dir)
  common = experiment.tuning_bindings(config, task, backbone_dir, FEATURE_LENGTHS, steps,
                                      BATCH_SIZE, eval_period, PROMPT_LENGTH, seed)
  gin_utils.parse(list(METHOD_FILES[method]),
                  [*common, f"MODEL_DIR = {run_dir!r}", f"train.early_stopping_metric = {key!r}"])
  summary = gin_utils.call(trainer.train)
  history = [h for h in summary["eval_history"] if key in h]
  best = os.path.join(run_dir, "prompts", "best.npy")
  gin_utils.parse(["prompts/prompt.gin", "runs/prompt_eval.gin"],
                  [*experiment.task_bindings(config, task, backbone_dir, FEATURE_LENGTHS,
                                             PROMPT_LENGTH),
                   f"MODEL_DIR = {os.path.join(run_dir, 'test')!r}", f"PROMPT_FILE = {best!r}",
                   "EVAL_SPLIT = 'test'"])
  test = gin_utils.call(eval_run.evaluate)[key]
  result = {"method": method, "train_examples": size, "seed": seed, "test_exact_match": test,
            "best_validation_exact_match": summary["best_metric"],
            "final_validation_exact_match": history[-1][key],
            "steps_to_90_percent": steps_to_fraction(history, key),
            "validation_curve": [(h["step"], h[key]) for h in history]}
  fs.write_json(os.path.join(run_dir, "result.json"), result)
  return result


def _mean_sd(values: List[float]) -> str:
  sd = statistics.stdev(values) if len(values) > 1 else 0.0
  return f"{statistics.mean(values):.3f} ± {sd:.3f}"


def table(results: List[Dict[str, Any]], sizes: Sequence[int]) -> str:
  lines = ["| train examples | method | test exact match (mean ± sd) | steps to 90% (mean ± sd) |",
           "|---|---|---|---|"]
  for size in sizes:
    for method in METHOD_FILES:
      cell = [r for r in results if r["method"] == method and r["train_examples"] == size]
      if cell:
        lines.append(f"| {size} | {method} | {_mean_sd([r['test_exact_match'] for r in cell])} | "
                     f"{_mean_sd([r['steps_to_90_percent'] for r in cell])} |")
  return "\n".join(lines)


def main(argv: Sequence[str] = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--out", default="/tmp/infoprompt_fewshot")
  parser.add_argument("--sizes", type=int, nargs="+", default=list(tasks.FEW_SHOT_SIZES))
  parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
  parser.add_argument("--steps", type=int, default=150)
  parser.add_argument("--eval_period", type=int, default=15)
  args = parser.parse_args(argv)
  os.makedirs(args.out, exist_ok=True)
  backbone_dir, _ = experiment.ensure_backbone(args.out, experiment.demo_backbone(),
                                               FEATURE_LENGTHS, steps=800, batch_size=64,
                                               learning_rate=3e-3, seed=0)
  cells = [(m, n, s) for n in args.sizes for s in args.seeds for m in METHOD_FILES]
  results, start = [], time.time()
  for i, (method, size, seed) in enumerate(cells, 1):
    results.append(run_cell(args.out, backbone_dir, method, size, seed, args.steps,
                            args.eval_period))
    elapsed = time.time() - start
    print(f"[{i}/{len(cells)}] {method} N={size} seed={seed}: test EM "
          f"{results[-1]['test_exact_match']:.3f} | ETA {elapsed / i * (len(cells) - i):.0f}s",
          file=sys.stderr, flush=True)
  text = table(results, args.sizes)
  fs.write_json(os.path.join(args.out, "results.json"), results)
  with open(os.path.join(args.out, "table.md"), "w") as f:
    f.write(text + "\n")
  print(text)
  return 0


if __name__ == "__main__":
  sys.exit(main())
