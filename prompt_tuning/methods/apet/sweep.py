"""Parameter-budget sweeps (Su et al. 2023, §4): every PET method at budgets from ~1e2 up.

    backbone (a backbone folder, or one the sweep is handed to pretrain: runs/sweep.gin
              hands it the demo's tiny T5)
    -> chance: the frozen backbone on the task (every method starts there: identity at init)
    -> full fine-tuning: one ordinary run, every parameter trainable
    -> cells: method x budget (x APET seed), each an ordinary `trainer.train` run with gin
       bindings in its own folder, with a done-marker when finished
    -> the summary (table, thresholds, spread) and its figure
Where each lives in MODEL_DIR: `run_dir.SweepDir`.

A budget maps to each method's own knob (`method_setting`): prompt tuning
`round(budget / d_model)` tokens, LoRA the rank whose count is nearest the budget
(rank · per-rank count on the self-attention q, v), adapters the bottleneck likewise,
APET the exact budget (one cell per selection seed). A cell whose method cannot come
near the budget (fewer than one token or rank, a rank above the projection width, a
prompt longer than `max_prompt_length`, more than APET's capacity) is listed as
skipped with the reason. The x-axis is the trainable-parameter count each cell
actually trained.

Thresholds (`thresholds`), on the metric in [0, 1] over `n` held-out examples:
  clearly above chance  mean ≥ chance + max(`low_margin`, 2·SE), SE the binomial
                        standard error of the difference, sqrt(m(1-m)/n + c(1-c)/n);
  low threshold         the smallest budget whose cell is clearly above chance
                        (per method; "all methods": the smallest budget from which on
                        every method that has a cell is);
  high threshold        the smallest budget within `high_gap` (1 point = 0.01) of full
                        fine-tuning.

Resuming: rerunning the same command skips every cell with a done-marker, and a cell
interrupted mid-run resumes from its own checkpoints (the trainer's resume).
"""
import dataclasses
import math
import os
import time
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import gin
import jax
import numpy as np

from prompt_tuning import fs, gin_utils
from prompt_tuning.errors import UserError
from prompt_tuning.methods.apet import selection
from prompt_tuning.methods.apet.counts import count_parameters
from prompt_tuning.methods.apet.sweep_report import format_table, plot, summarize  # noqa: F401
from prompt_tuning.models.config import T5Config
from prompt_tuning.run_dir import SweepDir

METHODS = ("prompt", "lora", "adapter", "apet")
# Gin files (under configs/) of each method, after the backbone bindings.
METHOD_FILES = {
    "prompt": ("runs/prompt_finetune.gin", "prompts/prompt.gin"),
    "lora": ("runs/prompt_finetune.gin", "methods/lora.gin"),
    "adapter": ("runs/prompt_finetune.gin", "methods/adapter.gin"),
    "apet": ("runs/prompt_finetune.gin", "methods/apet.gin"),
    "full_finetune": ("runs/prompt_finetune.gin", "methods/full_finetune.gin"),
}


class Skipped(Exception):
  """A method cannot come near a budget; the message says why."""


@dataclasses.dataclass(frozen=True)
class Cell:
  """One run of the sweep.

  Attributes:
    method: `prompt`, `lora`, `adapter`, `apet` or `full_finetune`.
    budget: the nominal budget (trainable parameters asked for); 0 for full fine-tuning.
    seed: APET's selection seed (0 otherwise).
    setting: the method's knob, e.g. `{'rank': 4}`.
    parameters: trainable parameters the cell trains.
    bindings: the gin bindings that set the knob.
  """
  method: str
  budget: int
  seed: int
  setting: Tuple[Tuple[str, int], ...]
  parameters: int
  bindings: Tuple[str, ...]

  @property
  def name(self) -> str:
    if self.method == "full_finetune":
      return "full_finetune"
    return f"{self.method}_b{self.budget}" + (f"_s{self.seed}" if self.method == "apet" else "")


def check_budgets(budgets: Sequence[Any], config: T5Config) -> List[int]:
  """The budgets as ints; a one-line UserError for one that is not in [1, the backbone's size]."""
  total = count_parameters("full_finetune", config)
  out = []
  for b in budgets:
    ok = (isinstance(b, (int, float, np.integer, np.floating)) and not isinstance(b, bool)
          and math.isfinite(b) and float(b).is_integer() and 1 <= b <= total)
    if not ok:
      raise UserError(f"sweep budget {b!r} is not a whole number of parameters from 1 to the "
                      f"backbone's {total:,}; fix SWEEP_BUDGETS")
    out.append(int(b))
  if len(set(out)) != len(out):
    raise UserError(f"SWEEP_BUDGETS {list(budgets)} repeats a budget; list each once")
  return sorted(out)


def _nearest(budget: int, count, low: int, high: int, what: str) -> int:
  """The knob value in [low, high] whose count(value) is nearest `budget`."""
  best = min(range(low, high + 1), key=lambda v: (abs(count(v) - budget), v))
  if count(best) > 2 * budget or 2 * count(best) < budget:
    raise Skipped(f"the nearest {what} ({best}) trains {count(best):,} parameters, more than "
                  f"2x off the budget")
  return best


def method_setting(method: str, budget: int, config: T5Config, seed: int = 0,
                   max_prompt_length: int = 150,
                   apet_settings: selection.Settings = selection.Settings()) -> Cell:
  """The cell of `method` at `budget`; raises Skipped when the method cannot come near it."""
  e, j = config.emb_dim, config.num_heads * config.head_dim
  if method == "prompt":
    tokens = round(budget / e)
    if tokens < 1:
      raise Skipped(f"below one prompt token ({e:,} parameters)")
    if tokens > max_prompt_length:
      raise Skipped(f"{tokens} prompt tokens exceed the longest prompt, {max_prompt_length} "
                    "(run_sweep.max_prompt_length)")
    return Cell(method, budget, 0, (("tokens", tokens),), tokens * e,
                (f"PROMPT_LENGTH = {tokens}",))
  if method == "lora":
    count = lambda r: count_parameters("lora", config, rank=r)  # noqa: E731
    if budget < count(1) / 2:
      raise Skipped(f"below rank 1 ({count(1):,} parameters)")
    rank = _nearest(budget, count, 1, min(e, j), "rank")
    # alpha / rank stays 2, the paper's 16 / 8.
    return Cell(method, budget, 0, (("rank", rank),), count(rank),
                (f"LORA_RANK = {rank}", f"LORA_ALPHA = {2.0 * rank}"))
  if method == "adapter":
    count = lambda m: count_parameters("adapter", config, bottleneck=m)  # noqa: E731
    if budget < count(1) / 2:
      raise Skipped(f"below bottleneck 1 ({count(1):,} parameters)")
    m = _nearest(budget, count, 1, e, "bottleneck")
    return Cell(method, budget, 0, (("bottleneck", m),), count(m), (f"ADAPTER_BOTTLENECK = {m}",))
  if method == "apet":
    capacity = selection.capacity(config, apet_settings)
    if budget > capacity:
      raise Skipped(f"above APET's capacity on this model ({capacity:,})")
    return Cell(method, budget, seed, (("budget", budget), ("seed", seed)), budget,
                (f"APET_BUDGET = {budget}", f"APET_SEED = {seed}"))
  raise UserError(f"unknown sweep method {method!r}; choose from {list(METHODS)}")


def plan_cells(methods: Sequence[str], budgets: Sequence[int], config: T5Config,
               apet_seeds: Sequence[int], max_prompt_length: int
               ) -> Tuple[List[Cell], List[Dict[str, Any]]]:
  """(cells to run, skipped `{method, budget, reason}`), methods in order, budgets ascending."""
  unknown = sorted(set(methods) - set(METHODS))
  if unknown or not methods:
    raise UserError(f"sweep methods {unknown or '[]'} are unknown; choose from {list(METHODS)} "
                    "(SWEEP_METHODS)")
  if "apet" in methods and not apet_seeds:
    raise UserError("APET needs at least one selection seed; set sweep.apet_seeds")
  cells, skipped = [], []
  for method in methods:
    for budget in budgets:
      for seed in (apet_seeds if method == "apet" else (0,)):
        try:
          cells.append(method_setting(method, budget, config, seed, max_prompt_length))
        except Skipped as why:
          if seed == (apet_seeds[0] if method == "apet" else 0):
            skipped.append({"method": method, "budget": budget, "reason": str(why)})
  return cells, skipped


# ---- results ----

# summarize, format_table and plot live in sweep_report (re-exported for callers).


# ---- running ----

def _duration(seconds: float) -> str:
  seconds = int(round(seconds))
  return f"{seconds // 60}m{seconds % 60:02d}s"


def _final_metric(summary: Mapping[str, Any], key: str) -> float:
  values = [h[key] for h in summary.get("eval_history", []) if key in h]
  if not values:
    raise UserError(f"the run in {summary.get('model_dir')} reported no {key}; check "
                    "sweep.metric against the task's metrics")
  return float(values[-1])


def _frozen_backbone_metric(backbone_dir: str, task: str, task_module: str,
                            feature_lengths: Mapping[str, int], metric_key: str,
                            num_examples: Optional[int]) -> float:
  """The frozen backbone (no new parameters) on the task: every method's starting point."""
  from prompt_tuning.io.backbone import load_backbone_config
  from prompt_tuning.models.t5 import T5
  from prompt_tuning.train import evaluation
  from prompt_tuning.train.run_setup import build_run
  gin.clear_config()
  ctx = build_run(initial_checkpoint_path=backbone_dir, mixture_or_task_names=[task],
                  mixture_or_task_module=[task_module],
                  model=T5(load_backbone_config(backbone_dir)))
  evaluator = evaluation.make_evaluator(task, feature_lengths, "validation", False, num_examples)
  fns = evaluation.EvalModelFns(ctx.model, ctx.partitioner, ctx.variables, ctx.shardings,
                                max_decode_length=feature_lengths["targets"],
                                inputs_length=feature_lengths["inputs"])
  return float(evaluation.run_evaluation(evaluator, fns, step=0)[metric_key])


@gin.configurable
def run_sweep(model_dir: str = gin.REQUIRED, budgets: Sequence[float] = gin.REQUIRED,
              methods: Sequence[str] = METHODS, apet_seeds: Sequence[int] = (0, 1, 2),
              initial_checkpoint_path: Optional[str] = None,
              task: str = "demo_bare_increment", task_module: str = "prompt_tuning.demo.tasks",
              task_feature_lengths: Optional[Mapping[str, int]] = None, steps: int = 300,
              batch_size: int = 32, metric: str = "exact_match",
              eval_num_examples: Optional[int] = None, held_out_examples: Optional[int] = None,
              full_finetune: bool = True, max_prompt_length: int = 150,
              low_margin: float = 0.05, high_gap: float = 0.01, seed: int = 0,
              pretrain_steps: int = 800, pretrain_batch_size: int = 64,
              pretrain_learning_rate: float = 3e-3, extra_bindings: Sequence[str] = (),
              method_bindings: Optional[Mapping[str, Sequence[str]]] = None,
              pretrained_backbone: Optional[Callable[..., Any]] = None) -> Dict[str, Any]:
  """Runs (or resumes) the sweep; returns and writes `MODEL_DIR/sweep.json` and `sweep.png`.

  Args:
    model_dir: output folder (`run_dir.SweepDir`).
    budgets: trainable-parameter budgets, each a whole number from 1 to the backbone's size.
    methods: any of `prompt`, `lora`, `adapter`, `apet`.
    apet_seeds: APET's selection seeds (one cell each per budget).
    initial_checkpoint_path: a backbone folder (`prompt-tuning convert`); None pretrains
      `pretrained_backbone` into MODEL_DIR/backbone (reused when present).
    task, task_module: the SeqIO task tuned (and its registering module).
    task_feature_lengths: `{'inputs': L, 'targets': Lt}`.
    steps, batch_size: of every run (including full fine-tuning).
    metric: the task's metric name (`<task>/<metric>` in the eval results), in [0, 1].
    eval_num_examples: held-out examples evaluated (None: the whole validation split).
    held_out_examples: how many examples that is (for the standard error); None: the
      validation split's size as SeqIO reports it, or eval_num_examples.
    full_finetune: also run full fine-tuning (the reference of the high threshold).
    max_prompt_length: longest prompt a budget may ask for.
    low_margin, high_gap: threshold definitions, see the module doc.
    seed: every run's RANDOM_SEED (APET's positions come from `apet_seeds`).
    pretrain_*: the pretraining of `pretrained_backbone`.
    extra_bindings: gin bindings appended to every run.
    method_bindings: `{method: [bindings]}` appended to that method's runs
      (`full_finetune` included), e.g. learning rates.
    pretrained_backbone: without `initial_checkpoint_path`, the backbone to pretrain: called
      with `steps, batch_size, learning_rate, seed, feature_lengths` (the pretrain_* settings),
      it gives an object with `config` (its `T5Config`) and `ensure(folder)` (pretrains into
      `folder` unless a complete backbone is there). runs/sweep.gin binds the demo's
      (`demo.pretrain.DemoBackbone`).
  """
  from prompt_tuning.io.backbone import load_backbone_config
  from prompt_tuning.train import data as data_lib
  from prompt_tuning.train import trainer
  from prompt_tuning.train.initialize import model_config_bindings
  feature_lengths = dict(task_feature_lengths or {"inputs": 16, "targets": 8})
  folder = SweepDir(fs.absolute(model_dir))
  if initial_checkpoint_path:
    backbone_dir, pretrained = initial_checkpoint_path, None
    config = load_backbone_config(backbone_dir)
  elif pretrained_backbone is None:
    raise UserError("the sweep has no backbone: set INITIAL_CHECKPOINT_PATH to a backbone folder, "
                    "or bind run_sweep.pretrained_backbone (runs/sweep.gin binds the demo's)")
  else:
    backbone_dir = folder.backbone
    pretrained = pretrained_backbone(steps=pretrain_steps, batch_size=pretrain_batch_size,
                                     learning_rate=pretrain_learning_rate, seed=seed,
                                     feature_lengths=feature_lengths)
    config = pretrained.config
  budget_list = check_budgets(budgets, config)
  cells, skipped = plan_cells(methods, budget_list, config, list(apet_seeds), max_prompt_length)
  data_lib.import_task_modules([task_module])
  data_lib.get_mixture_or_task(task)
  metric_key = f"{task}/{metric}"
  os.makedirs(folder.root, exist_ok=True)

  if pretrained is not None:
    pretrained.ensure(backbone_dir)
  config = load_backbone_config(backbone_dir)

  chance_file = folder.chance
  chance_record = fs.read_json(chance_file)
  if chance_record is None or chance_record.get("task") != task:
    value = _frozen_backbone_metric(backbone_dir, task, task_module, feature_lengths, metric_key,
                                    eval_num_examples)
    chance_record = {"task": task, "metric": metric_key, "value": value}
    fs.write_json(chance_file, chance_record)
  chance = float(chance_record["value"])
  print(f"chance (frozen backbone on {task}): {metric} {chance:.3f}", flush=True)
  if held_out_examples is None:
    held_out_examples = eval_num_examples or _split_size(task)

  common = [
      *model_config_bindings(config),
      f"MIXTURE_OR_TASK_NAME = {task!r}", f"MIXTURE_OR_TASK_MODULE = {task_module!r}",
      f"INITIAL_CHECKPOINT_PATH = {backbone_dir!r}",
      f"TASK_FEATURE_LENGTHS = {feature_lengths!r}", f"TRAIN_STEPS = {steps}",
      f"BATCH_SIZE = {batch_size}", f"EVAL_PERIOD = {steps}", f"CHECKPOINT_PERIOD = {steps}",
      f"RANDOM_SEED = {seed}", "train.keep_checkpoints = 1", "train.log_every = 100",
      f"train.eval_num_examples = {eval_num_examples!r}",
  ]
  if full_finetune:
    total = count_parameters("full_finetune", config)
    cells = [Cell("full_finetune", 0, 0, (), total, ())] + cells
  for s in skipped:
    print(f"skipping {s['method']} at budget {s['budget']:,}: {s['reason']}", flush=True)

  rows, walls = [], []
  start = time.time()
  for i, cell in enumerate(cells, 1):
    run_dir = folder.cell(cell.name)
    marker = run_dir.done
    label = (f"[{i}/{len(cells)}] {cell.name} "
             f"({', '.join(f'{k} {v}' for k, v in cell.setting) or 'all parameters'}; "
             f"{cell.parameters:,} trainable)")
    done = fs.read_json(marker)
    if done is not None:
      rows.append(done)
      print(f"{label}: done before, {metric} {done['metric']:.3f}", flush=True)
      continue
    print(f"{label}: training", flush=True)
    bindings = [*common, f"MODEL_DIR = {run_dir.root!r}", *cell.bindings, *extra_bindings,
                *(method_bindings or {}).get(cell.method, ())]
    if cell.method != "prompt":
      bindings.append("build_model.prompt = None")
    t0 = time.time()
    gin_utils.parse(list(METHOD_FILES[cell.method]), bindings)
    summary = gin_utils.call(trainer.train)
    wall = time.time() - t0
    if summary["trainable_parameters"] != cell.parameters:
      raise UserError(f"cell {cell.name} trained {summary['trainable_parameters']:,} parameters, "
                      f"not the planned {cell.parameters:,}; check sweep.method_bindings")
    row = {"method": cell.method, "budget": cell.budget, "seed": cell.seed,
           "setting": dict(cell.setting), "parameters": cell.parameters,
           "metric": _final_metric(summary, metric_key), "steps": int(summary["final_step"]),
           "wall_s": round(wall, 1), "run_dir": run_dir.root}
    fs.write_json(marker, row)
    rows.append(row)
    walls.append(wall)
    left = len(cells) - i
    eta = _duration(np.mean(walls) * left) if left else "0m00s"
    print(f"{label}: {metric} {row['metric']:.3f} in {wall:.0f}s | {i}/{len(cells)} cells, "
          f"{_duration(time.time() - start)} so far, ETA {eta}", flush=True)

  full = next((r for r in rows if r["method"] == "full_finetune"), None)
  tuned = [r for r in rows if r["method"] != "full_finetune"]
  summary = {
      "task": task, "metric": metric, "steps": steps, "batch_size": batch_size,
      "backbone": {"path": backbone_dir, "config": config.to_dict(),
                   "parameters": count_parameters("full_finetune", config)},
      "held_out_examples": held_out_examples, "chance": chance,
      "full_finetune": ({"metric": full["metric"], "parameters": full["parameters"]}
                        if full else None),
      "budgets": budget_list, "apet_seeds": list(apet_seeds), "cells": rows, "skipped": skipped,
      "thresholds": summarize(tuned, chance, full["metric"] if full else None, held_out_examples,
                              low_margin, high_gap),
  }
  figure = folder.figure
  if jax.process_index() == 0:  # the figure, like the JSON, from the first host only
    plot(figure, summary)
  summary["figure"] = figure
  fs.write_json(folder.summary, summary)
  print("\n" + format_table(summary))
  t = summary["thresholds"]
  print(f"\nlow threshold (clearly above chance): {t['low_threshold']}; all methods: "
        f"{t['low_threshold_all_methods']}\nhigh threshold (within {high_gap} of full "
        f"fine-tuning): {t['high_threshold']}\nsummary: {folder.summary}; "
        f"figure: {figure}", flush=True)
  return summary


def _split_size(task: str) -> int:
  import seqio
  t = seqio.get_mixture_or_task(task)
  try:
    return int(t.num_input_examples("validation"))
  except Exception:  # a source without counts
    raise UserError(f"task {task} does not report its validation size; set "
                    "sweep.held_out_examples") from None
