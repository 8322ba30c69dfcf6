"""Grids of ordinary tuning runs on the demo backbone, for the paper-claim experiments.

Every cell is one `trainer.train` run configured by gin files and bindings, as
`prompt-tuning train` would run it. The protocol is the same for every
experiment: the best-by-validation prompt (`prompts/best.npy`) is chosen on
the task's `validation` split and reported on its disjoint `test` split,
which chose nothing. A finished cell (its `result.json`) is never recomputed,
so an interrupted experiment resumes where it stopped.
"""
import os
import statistics
import sys
import time
from typing import Any, Callable, Dict, List, Sequence, Tuple

from prompt_tuning import configurables, fs, gin_utils
from prompt_tuning.demo import experiment
from prompt_tuning.demo.pretrain import DemoBackbone
from prompt_tuning.io.backbone import load_backbone_config
from prompt_tuning.run_dir import DemoDir
from prompt_tuning.train import eval_run, trainer

FEATURE_LENGTHS = {"inputs": 16, "targets": 8}
PLAIN = ("runs/prompt_finetune.gin", "prompts/prompt.gin")


def backbone(out: str) -> str:
  """The demo backbone in `OUT/backbone` (pretrained once, as `prompt-tuning demo` does)."""
  path = DemoDir(out).backbone
  DemoBackbone(steps=800, batch_size=64, learning_rate=3e-3, seed=0,
               feature_lengths=FEATURE_LENGTHS).ensure(path)
  return path


def steps_to_fraction(history: Sequence[Dict[str, float]], key: str, fraction: float = 0.9) -> int:
  """First step whose `key` reaches `fraction` of the last evaluation's value."""
  final = history[-1][key]
  return next(h["step"] for h in history if h[key] >= fraction * final)


def run_cell(run_dir: str, backbone_dir: str, task: str, files: Sequence[str],
             bindings: Sequence[str], *, seed: int, steps: int, eval_period: int,
             prompt_length: int, batch_size: int = 16,
             feature_lengths: Dict[str, int] = None) -> Dict[str, Any]:
  """Trains one cell, selects its best validation prompt, reports it on `test`.

  `feature_lengths` only pads (every length is masked): results do not depend on it.
  """
  feature_lengths = feature_lengths or FEATURE_LENGTHS
  done = fs.read_json(os.path.join(run_dir, "result.json"))
  if done is not None:
    return done
  key = f"{task}/{experiment.METRIC}"
  config = load_backbone_config(backbone_dir)
  common = experiment.tuning_bindings(config, task, backbone_dir, feature_lengths, steps,
                                      batch_size, eval_period, prompt_length, seed)
  configurables.parse(list(files), [*common, f"MODEL_DIR = {run_dir!r}",
                                f"train.early_stopping_metric = {key!r}", *bindings])
  summary = gin_utils.call(trainer.train)
  history = [h for h in summary["eval_history"] if key in h]
  configurables.parse(["prompts/prompt.gin", "runs/prompt_eval.gin"],
                  [*experiment.task_bindings(config, task, backbone_dir, feature_lengths,
                                             prompt_length),
                   f"MODEL_DIR = {os.path.join(run_dir, 'test')!r}",
                   f"PROMPT_FILE = {os.path.join(run_dir, 'prompts', 'best.npy')!r}",
                   "EVAL_SPLIT = 'test'"])
  result = {"test_exact_match": gin_utils.call(eval_run.evaluate)[key],
            "best_validation_exact_match": summary["best_metric"],
            "best_step": summary["best_step"],
            "final_validation_exact_match": history[-1][key],
            "steps_to_90_percent": steps_to_fraction(history, key),
            "trainable_parameters": summary["trainable_parameters"],
            "validation_curve": [(h["step"], h[key]) for h in history]}
  fs.write_json(os.path.join(run_dir, "result.json"), result)
  return result


def run_grid(cells: Sequence[Tuple[Dict[str, Any], Callable[[], Dict[str, Any]]]]
             ) -> List[Dict[str, Any]]:
  """Runs `(labels, run)` cells in order with progress and ETA; returns labels + results."""
  results, start = [], time.time()
  for i, (labels, run) in enumerate(cells, 1):
    results.append({**labels, **run()})
    elapsed = time.time() - start
    print(f"[{i}/{len(cells)}] {labels}: test EM {results[-1]['test_exact_match']:.3f} | "
          f"ETA {elapsed / i * (len(cells) - i):.0f}s", file=sys.stderr, flush=True)
  return results


def mean_sd(values: Sequence[float], digits: int = 3) -> str:
  sd = statistics.stdev(values) if len(values) > 1 else 0.0
  return f"{statistics.mean(values):.{digits}f} ± {sd:.{digits}f}"


def write_outputs(out: str, results: List[Dict[str, Any]], table: str) -> None:
  fs.write_json(os.path.join(out, "results.json"), results)
  with open(os.path.join(out, "table.md"), "w") as f:
    f.write(table + "\n")
  print(table)


def methods_by_length(out: str, backbone_dir: str, task: str,
                      methods: Dict[str, Tuple[Sequence[str], Sequence[str]]],
                      lengths: Sequence[int], seeds: Sequence[int], steps: int,
                      eval_period: int) -> Tuple[List[Dict[str, Any]], str]:
  """Every (method, prompt length, seed) cell in `OUT/<method>_p<length>_seed<seed>`.

  Args:
    methods: name -> (gin files, bindings).

  Returns:
    (the results, a markdown table of test exact match per length and method).
  """
  def cell(method, length, seed):
    files, bindings = methods[method]
    run_dir = os.path.join(out, f"{method}_p{length}_seed{seed}")
    return ({"method": method, "prompt_length": length, "seed": seed},
            lambda: run_cell(run_dir, backbone_dir, task, files, bindings, seed=seed,
                             steps=steps, eval_period=eval_period, prompt_length=length,
                             # The trainer wants the prompt within the input length.
                             feature_lengths={"inputs": max(16, length), "targets": 8}))

  results = run_grid([cell(m, p, s) for p in lengths for s in seeds for m in methods])
  lines = ["| prompt length | " + " | ".join(methods) + " |", "|---" * (len(methods) + 1) + "|"]
  for length in lengths:
    row = [mean_sd([r["test_exact_match"] for r in results
                    if r["method"] == m and r["prompt_length"] == length]) for m in methods]
    lines.append(f"| {length} | " + " | ".join(row) + " |")
  return results, "\n".join(lines)

