"""The demo experiment: pretrain a tiny backbone, then tune prompts for a task with no instruction.

    corpus (demo.tasks) -> pretrain T5 1.1 tiny on copy:/reverse:/sort: -> backbone folder
    -> baseline: frozen backbone + untrained random prompt on the bare task
    -> for each method: gin files + bindings -> trainer.train (checkpoints, SeqIO eval)
    -> table, summary and learning curves (where each lives: `run_dir.DemoDir`)

Every tuning run goes through the same code path as `prompt-tuning train`: the
gin files in `configs/`, `trainer.train`, Orbax checkpoints and `seqio.Evaluator`
on held-out inputs that no training split (pretraining included) contains.
"""
import os
import shutil
import time
from typing import Any, Dict, List, Mapping, Optional, Sequence

import gin

from prompt_tuning import gin_utils
from prompt_tuning.demo import plots, tasks
from prompt_tuning.demo.pretrain import DemoBackbone
from prompt_tuning.errors import UserError
from prompt_tuning.fs import write_json
from prompt_tuning.io.backbone import load_backbone_config
from prompt_tuning.methods.xprompt.driver import run_xprompt
from prompt_tuning.models.config import T5Config
from prompt_tuning.models.t5 import T5
from prompt_tuning.run_dir import DemoDir
from prompt_tuning.train import evaluation, trainer
from prompt_tuning.train.initialize import model_config_bindings
from prompt_tuning.train.run_setup import RunContext, build_run

METRIC = "exact_match"
# Gin files (under configs/) of each method, on top of the backbone bindings.
METHOD_FILES = {
    "prompt_tuning": ("runs/prompt_finetune.gin", "prompts/prompt.gin"),
    "residual": ("runs/prompt_finetune.gin", "prompts/prompt.gin", "methods/residual.gin"),
    "xprompt": ("runs/prompt_finetune.gin", "prompts/prompt.gin", "methods/xprompt.gin"),
    "infoprompt": ("runs/prompt_finetune.gin", "prompts/prompt.gin", "methods/infoprompt.gin"),
}


def _last_metric(history: Sequence[Mapping[str, float]], key: str) -> Optional[float]:
  values = [h[key] for h in history if key in h]
  return values[-1] if values else None


def evaluate_variables(ctx: RunContext, task: str, feature_lengths: Mapping[str, int]) -> float:
  """Held-out exact match of the run's variables on `task`, through the trainer's SeqIO evaluation."""
  evaluator = evaluation.make_evaluator(task, feature_lengths, "validation")
  fns = evaluation.EvalModelFns(ctx.model, ctx.partitioner, ctx.variables, ctx.shardings,
                                max_decode_length=feature_lengths["targets"],
                                inputs_length=feature_lengths["inputs"])
  return evaluation.run_evaluation(evaluator, fns, step=0)[f"{task}/{METRIC}"]


def instructed_reference(backbone_dir: str, operation: str,
                         feature_lengths: Mapping[str, int]) -> float:
  """The backbone WITH the instruction word (no prompt): what a perfect prompt could reach."""
  gin.clear_config()
  ctx = build_run(initial_checkpoint_path=backbone_dir,
                  model=T5(load_backbone_config(backbone_dir), prompt=None))
  return evaluate_variables(ctx, tasks.task_name(operation, True), feature_lengths)


def random_prompt_baseline(task: str, feature_lengths: Mapping[str, int], backbone_dir: str,
                           seed: int) -> float:
  """Frozen backbone + the untrained prompt a run starts from (gin must be parsed)."""
  ctx = build_run(initial_checkpoint_path=backbone_dir, seed=seed)
  return evaluate_variables(ctx, task, feature_lengths)


def _run_gin(entry, files: Sequence[str], bindings: Sequence[str]) -> Dict[str, Any]:
  """Parses the method's gin files, then runs `entry` (`trainer.train` or `run_xprompt`)."""
  gin_utils.parse(list(files), list(bindings))
  start = time.time()
  summary = gin_utils.call(entry)
  return {"summary": summary, "wall_s": time.time() - start}


def _row(method: str, result: Dict[str, Any], task: str) -> Dict[str, Any]:
  summary = result["summary"]
  key = f"{task}/{METRIC}"
  return {
      "method": method,
      "trainable_parameters": int(summary["trainable_parameters"]),
      "held_out_exact_match": _last_metric(summary["eval_history"], key),
      "steps": int(summary["final_step"]),
      "wall_s": round(result["wall_s"], 1),
      "train_history": [{"step": h["step"], "loss": h["loss"]} for h in summary["train_history"]],
      "eval_history": [{"step": h["step"], METRIC: h[key]} for h in summary["eval_history"]
                       if key in h],
      "model_dir": summary.get("model_dir"),
      # XPrompt's extras: pruning choice, kept prompt values, mask heatmap PNG.
      **{k: summary[k] for k in ("heatmap", "kept_parameters", "chosen", "stages")
         if summary.get(k) is not None},
  }


def format_table(summary: Mapping[str, Any]) -> str:
  """The console table: one line per method plus the references."""
  lines = [f"{'method':<34}{'trainable':>11}{'held-out EM':>13}{'steps':>7}{'wall s':>8}"]
  def add(name, params, em, steps, wall):
    em_text = "-" if em is None else f"{em:.3f}"
    lines.append(f"{name:<34}{params:>11}{em_text:>13}{steps:>7}{wall:>8}")
  ref = summary["backbone"]
  add("backbone + instruction word", "-", ref["instructed_exact_match"], ref["steps"],
      round(ref["wall_s"], 1))
  add("random prompt (untrained)", "-", summary["baseline"]["held_out_exact_match"], 0, "-")
  for row in summary["methods"]:
    add(row["method"], f"{row['trainable_parameters']:,}", row["held_out_exact_match"],
        row["steps"], row["wall_s"])
  return "\n".join(lines)


def task_bindings(config: T5Config, task: str, backbone_dir: str,
                  feature_lengths: Mapping[str, int], prompt_length: int) -> List[str]:
  """Gin bindings of the demo backbone, a task and the prompt (what train and eval share)."""
  return [
      *model_config_bindings(config),
      f"MIXTURE_OR_TASK_NAME = {task!r}",
      "MIXTURE_OR_TASK_MODULE = 'prompt_tuning.demo.tasks'",
      f"INITIAL_CHECKPOINT_PATH = {backbone_dir!r}",
      f"TASK_FEATURE_LENGTHS = {dict(feature_lengths)!r}",
      f"PROMPT_LENGTH = {prompt_length}",
      # Byte ids 3..258 are the vocabulary's real symbols (0-2: pad, eos, unk).
      "sampled_vocab.population_start = 3", "sampled_vocab.population_size = 256",
  ]


def tuning_bindings(config: T5Config, task: str, backbone_dir: str,
                    feature_lengths: Mapping[str, int], steps: int, batch_size: int,
                    eval_period: int, prompt_length: int, seed: int) -> List[str]:
  """Gin bindings of a prompt-tuning run on the demo backbone (add MODEL_DIR and a method)."""
  return [
      *task_bindings(config, task, backbone_dir, feature_lengths, prompt_length),
      f"TRAIN_STEPS = {steps}", f"BATCH_SIZE = {batch_size}",
      f"EVAL_PERIOD = {eval_period}", f"CHECKPOINT_PERIOD = {steps}", f"RANDOM_SEED = {seed}",
      "train.log_every = 10", "train.keep_checkpoints = 1",
  ]


@gin.configurable
def run_demo(model_dir: str = gin.REQUIRED, operation: str = "reverse",
             methods: Sequence[str] = ("prompt_tuning", "residual", "xprompt", "infoprompt"),
             pretrain_steps: int = 800, pretrain_batch_size: int = 64,
             pretrain_learning_rate: float = 3e-3, tune_steps: int = 300,
             tune_batch_size: int = 32, eval_period: int = 100, prompt_length: int = 8,
             residual_bottleneck: int = 32, xprompt_pieces: int = 8,
             task_feature_lengths: Mapping[str, int] = None, seed: int = 0,
             extra_bindings: Sequence[str] = (),
             method_bindings: Optional[Mapping[str, Sequence[str]]] = None) -> Dict[str, Any]:
  """Runs the whole demo; returns (and writes) the summary.

  Args:
    model_dir: output folder; `backbone/` in it is reused when present, the
      method folders are rewritten on every run.
    operation: the task tuned WITHOUT its instruction word (`copy`, `reverse`, `sort`).
    methods: any of `prompt_tuning`, `residual`, `xprompt`, `infoprompt`.
    extra_bindings: gin bindings appended to every tuning run.
    method_bindings: `{method: [bindings]}` appended to that method's run only.
  """
  if operation not in tasks.OPERATIONS:
    raise UserError(f"demo operation {operation!r} is unknown; choose one of {sorted(tasks.OPERATIONS)}")
  unknown = sorted(set(methods) - set(METHOD_FILES))
  if unknown:
    raise UserError(f"demo methods {unknown} are unknown; choose from {sorted(METHOD_FILES)}")
  feature_lengths = dict(task_feature_lengths or {"inputs": 16, "targets": 8})
  folder = DemoDir(model_dir)
  start = time.time()
  os.makedirs(model_dir, exist_ok=True)
  backbone_dir = folder.backbone
  backbone = DemoBackbone(steps=pretrain_steps, batch_size=pretrain_batch_size,
                          learning_rate=pretrain_learning_rate, seed=seed,
                          feature_lengths=feature_lengths).ensure(backbone_dir)
  config = load_backbone_config(backbone_dir)
  backbone["instructed_exact_match"] = instructed_reference(backbone_dir, operation, feature_lengths)
  print(f"backbone with the instruction word '{operation}:': held-out exact match "
        f"{backbone['instructed_exact_match']:.3f}", flush=True)

  task = tasks.task_name(operation, instruction=False)
  common = tuning_bindings(config, task, backbone_dir, feature_lengths, tune_steps,
                           tune_batch_size, eval_period, prompt_length, seed)
  gin_utils.parse(list(METHOD_FILES["prompt_tuning"]),
                  [*common, f"MODEL_DIR = {folder.baseline!r}", *extra_bindings])
  baseline = random_prompt_baseline(task, feature_lengths, backbone_dir, seed)
  print(f"frozen backbone + untrained random prompt on {task}: held-out exact match "
        f"{baseline:.3f}", flush=True)

  rows = []
  for method in methods:
    run_dir = folder.method(method)
    shutil.rmtree(run_dir, ignore_errors=True)  # a fresh run, not a resume of the last demo
    bindings = [*common, f"MODEL_DIR = {run_dir!r}", *extra_bindings]
    if method == "residual":
      bindings.append(f"RESIDUAL_BOTTLENECK = {residual_bottleneck}")
    if method == "infoprompt":  # θ's classes: the digits, what the first output token can be
      bindings.append(f"CLASS_LABELS = {list(tasks.LABEL_WORDS)!r}")
    bindings += list((method_bindings or {}).get(method, ()))
    print(f"\n=== {method}: tuning a {prompt_length}-token prompt on {task} ===", flush=True)
    if method == "xprompt":
      result = _run_gin(run_xprompt, METHOD_FILES[method],
                        [*bindings, f"XPROMPT_PIECES = {xprompt_pieces}"])
    else:
      result = _run_gin(trainer.train, METHOD_FILES[method], bindings)
    rows.append(_row(method, result, task))

  summary = {
      "task": task, "operation": operation, "metric": METRIC,
      "held_out_examples": tasks.SPLIT_SIZES["validation"],
      "chance_note": "a frozen backbone cannot tell which of "
                     f"{sorted(tasks.OPERATIONS)} is wanted without an instruction",
      "backbone": {**backbone, "config": config.to_dict(), "path": backbone_dir},
      "baseline": {"method": "random_prompt", "held_out_exact_match": baseline,
                   "prompt_length": prompt_length},
      "methods": rows, "prompt_length": prompt_length,
      "total_wall_s": round(time.time() - start, 1),
  }
  curves = folder.curves
  plots.learning_curves(curves, summary)
  summary["learning_curves"] = curves
  write_json(folder.summary, summary)
  print("\n" + format_table(summary))
  for row in rows:
    if row.get("heatmap"):
      print(f"XPrompt mask heatmap: {row['heatmap']}")
  print(f"\ntotal {summary['total_wall_s']:.0f}s; summary: {folder.summary}; "
        f"curves: {curves}", flush=True)
  return summary
