"""Grids of ordinary tuning runs on the demo backbone, for the paper-claim experiments.

Every cell is one `trainer.train` run configured by gin files and bindings, as
`prompt-tuning train` would run it. The protocol is the same for every
experiment: the best-by-validation prompt (`prompts/best.npy`) is chosen on
the task's `validation` split and reported on its disjoint `test` split,
which chose nothing. A finished cell (its `result.json`) is never recomputed,
so an interrupted experiment resumes where it stopped.
"""
import math
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

  `feature_lengths` only pads (every length is masked; the prompt is added on top of the
  inputs): without dropout results do not depend on it; with the run file's dropout 0.1 a
  different padding may draw different dropout masks (the same distribution).
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


def lr_label(learning_rate: float) -> str:
  """A learning rate as it appears in run folder names and tables (0.3 -> "0.3")."""
  return f"{learning_rate:g}"


def methods_by_length(out: str, backbone_dir: str, task: str,
                      methods: Dict[str, Tuple[Sequence[str], Sequence[str]]],
                      lengths: Sequence[int], seeds: Sequence[int], steps: int,
                      eval_period: int, learning_rates: Sequence[float] = None,
                      ) -> Tuple[List[Dict[str, Any]], str]:
  """Every (method, prompt length[, learning rate], seed) cell, one run folder each.

  Without `learning_rates` the cells run at the methods' own rate, in
  `OUT/<method>_p<length>_seed<seed>`. With them, every method runs at every rate
  (`adafactor.learning_rate`, after the method's bindings) in
  `OUT/<method>_p<length>_lr<lr>_seed<seed>`, and each result carries its `learning_rate`.
  Prompts may be longer than the 16-token inputs (the prompt is added on top of them).

  Args:
    methods: name -> (gin files, bindings).

  Returns:
    (the results, a markdown table of test exact match per length and method; with
    `learning_rates`, of every rate: use `select_learning_rates` to pick one).
  """
  rates = list(learning_rates) if learning_rates else [None]

  def cell(method, length, lr, seed):
    files, bindings = methods[method]
    labels = {"method": method, "prompt_length": length, "seed": seed}
    name = f"{method}_p{length}_seed{seed}"
    if lr is not None:
      labels["learning_rate"] = lr
      name = f"{method}_p{length}_lr{lr_label(lr)}_seed{seed}"
      bindings = (*bindings, f"adafactor.learning_rate = {lr!r}")
    run_dir = os.path.join(out, name)
    return (labels, lambda: run_cell(run_dir, backbone_dir, task, files, bindings, seed=seed,
                                     steps=steps, eval_period=eval_period,
                                     prompt_length=length))

  results = run_grid([cell(m, p, lr, s) for p in lengths for lr in rates for s in seeds
                      for m in methods])
  if learning_rates:
    return results, learning_rate_table(results, list(methods), lengths)
  lines = ["| prompt length | " + " | ".join(methods) + " |", "|---" * (len(methods) + 1) + "|"]
  for length in lengths:
    row = [mean_sd([r["test_exact_match"] for r in results
                    if r["method"] == m and r["prompt_length"] == length]) for m in methods]
    lines.append(f"| {length} | " + " | ".join(row) + " |")
  return results, "\n".join(lines)


def _cell_runs(results: Sequence[Dict[str, Any]], method: str, length: int,
               learning_rate: float) -> List[Dict[str, Any]]:
  """The runs (one per seed, by seed) of one (method, length, learning rate)."""
  runs = [r for r in results if r["method"] == method and r["prompt_length"] == length
          and r.get("learning_rate") == learning_rate]
  return sorted(runs, key=lambda r: r["seed"])


def select_learning_rates(results: Sequence[Dict[str, Any]],
                          key: str = "best_validation_exact_match"
                          ) -> Dict[Tuple[str, int], float]:
  """For each (method, prompt length), the learning rate with the best mean `key` over seeds.

  `key` is a validation number (by default each run's best-validation step's exact
  match), never test. A tie goes to the smaller rate.
  """
  chosen = {}
  for method, length in sorted({(r["method"], r["prompt_length"]) for r in results}):
    rates = sorted({r["learning_rate"] for r in results
                    if r["method"] == method and r["prompt_length"] == length})
    means = {lr: statistics.mean(r[key] for r in _cell_runs(results, method, length, lr))
             for lr in rates}
    chosen[(method, length)] = max(rates, key=lambda lr: (means[lr], -lr))
  return chosen


def paired_difference(a: Sequence[Dict[str, Any]], b: Sequence[Dict[str, Any]],
                      key: str = "test_exact_match") -> Dict[str, float]:
  """Mean of a - b over seeds present in both, paired by seed, with its standard error.

  Returns `mean`, `sd` (of the per-seed differences), `se` (sd / sqrt(n)), `n` and
  `n_se` (mean / se; None when se is 0).
  """
  by_seed = {r["seed"]: r[key] for r in b}
  diffs = [r[key] - by_seed[r["seed"]] for r in a if r["seed"] in by_seed]
  if len(diffs) < 2:
    raise ValueError(f"a paired difference needs 2 or more common seeds, got {len(diffs)}")
  mean, sd = statistics.mean(diffs), statistics.stdev(diffs)
  se = sd / math.sqrt(len(diffs))
  return {"mean": mean, "sd": sd, "se": se, "n": len(diffs),
          "n_se": mean / se if se > 0 else None}


def format_difference(d: Dict[str, float]) -> str:
  n_se = "-" if d["n_se"] is None else f"{d['n_se']:+.1f} SE"
  return f"{d['mean']:+.3f} ± {d['se']:.3f} ({n_se})"


def learning_rate_table(results: Sequence[Dict[str, Any]], methods: Sequence[str],
                        lengths: Sequence[int]) -> str:
  """Validation and test exact match of every (method, length, learning rate), mean ± sd.

  The rate `select_learning_rates` picks for a (method, length) is marked with *.
  """
  chosen = select_learning_rates(results)
  lines = ["| method | prompt length | learning rate | best validation EM | test EM |",
           "|---|---|---|---|---|"]
  for method in methods:
    for length in lengths:
      rates = sorted({r["learning_rate"] for r in results
                      if r["method"] == method and r["prompt_length"] == length})
      for lr in rates:
        runs = _cell_runs(results, method, length, lr)
        mark = " *" if chosen.get((method, length)) == lr else ""
        lines.append(f"| {method} | {length} | {lr_label(lr)}{mark} | "
                     f"{mean_sd([r['best_validation_exact_match'] for r in runs])} | "
                     f"{mean_sd([r['test_exact_match'] for r in runs])} |")
  return "\n".join(lines)


def selected_comparison(results: Sequence[Dict[str, Any]], a: str, b: str,
                        lengths: Sequence[int],
                        chosen: Dict[Tuple[str, int], float] = None) -> Tuple[List[Dict], str]:
  """Method `a` against `b` per prompt length, each at its validation-selected rate.

  Returns rows (length, each method's rate and test mean/sd, the paired test difference
  a - b) and a markdown table of them.
  """
  chosen = chosen or select_learning_rates(results)
  rows = []
  lines = [f"| prompt length | {b}: lr | {b}: test EM | {a}: lr | {a}: test EM | "
           f"{a} − {b} (paired, ± SE) |", "|---|---|---|---|---|---|"]
  for length in lengths:
    runs_a = _cell_runs(results, a, length, chosen[(a, length)])
    runs_b = _cell_runs(results, b, length, chosen[(b, length)])
    diff = paired_difference(runs_a, runs_b)
    test_a = [r["test_exact_match"] for r in runs_a]
    test_b = [r["test_exact_match"] for r in runs_b]
    rows.append({"prompt_length": length, f"{a}_learning_rate": chosen[(a, length)],
                 f"{b}_learning_rate": chosen[(b, length)], f"{a}_test": test_a,
                 f"{b}_test": test_b, "difference": diff})
    lines.append(f"| {length} | {lr_label(chosen[(b, length)])} | {mean_sd(test_b)} | "
                 f"{lr_label(chosen[(a, length)])} | {mean_sd(test_a)} | "
                 f"{format_difference(diff)} |")
  return rows, "\n".join(lines)
