"""XPrompt's three stages as one resumable run (`prompt-tuning xprompt`).

    stage 1: a trainer run with masks = 1          -> the stage's kept trainable tree
    stage 2: importance scores + the pruning search  -> the chosen masks, report, heatmap
    stage 3: a trainer run from the rewound stage-1 prompt, masks fixed
    -> the final prompt (pruned entries zero) and the summary `run_xprompt` returns

Where each lives in MODEL_DIR: `run_dir.XPromptDir`. Every stage writes its `stage.json` last, so a stage is finished exactly when
that file exists: a restart skips finished stages, and the trainer resumes an
unfinished training stage from its own checkpoints. Stages 1 and 3 are plain
`trainer.train` runs with the same gin train config (optimizer, schedule,
data order); only `model_dir` and the initial variables differ.
"""
import inspect
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import flax
import gin
import jax
import jax.numpy as jnp
import numpy as np

from prompt_tuning import checks, fs, multihost
from prompt_tuning.errors import UserError
from prompt_tuning.methods.xprompt import masks as xprompt
from prompt_tuning.methods.xprompt.search import SearchContext, search_stage
from prompt_tuning.run_dir import XPromptDir, XPromptSearchDir, XPromptStageDir
from prompt_tuning.train import trainer
from prompt_tuning.train.checkpoints import load_tree, save_tree, write_prompt
from prompt_tuning.train.initialize import abstract_variables, build_model
from prompt_tuning.multihost import to_host
from prompt_tuning.train.partitioning import Partitioner
from prompt_tuning.train.trainable import merge_variables


def _without_variables(summary: Mapping[str, Any]) -> Dict[str, Any]:
  return {k: v for k, v in summary.items() if k not in ("trainable", "frozen", "best_trainable")}


# --- The gin train config ------------------------------------------------------


def train_config() -> Dict[str, Any]:
  """`trainer.train`'s arguments as gin binds them (signature defaults filled in)."""
  config = {name: p.default for name, p in inspect.signature(trainer.train).parameters.items()}
  config.update(gin.get_bindings(trainer.train))
  missing = [k for k in ("mixture_or_task_name", "task_feature_lengths", "batch_size")
             if config.get(k) is gin.REQUIRED]
  if missing:
    raise UserError(f"gin configuration incomplete: train.{missing[0]} is not bound; add "
                    "--gin_file=runs/prompt_finetune.gin and the task macros")
  return config


# --- Stages -----------------------------------------------------------------------


def _interrupted(summary: Mapping[str, Any], config: Mapping[str, Any]) -> bool:
  """Whether the trainer stopped at `train.stop_after_steps` rather than finishing."""
  stop = config.get("stop_after_steps")
  return stop is not None and stop < config["train_steps"] and summary["final_step"] == stop


def _training_stage(title: str, stage_dir: XPromptStageDir, config: Mapping[str, Any],
                    edit: Optional[Callable] = None) -> Tuple[Optional[Dict[str, Any]], Any]:
  """Runs (or resumes) one trainer stage.

  Returns:
    (stage record, final variables), or (None, None) when the trainer stopped at
    `train.stop_after_steps`.
  """
  print(f"=== xprompt {title} -> {stage_dir} ===", flush=True)
  summary = trainer.train(model_dir=stage_dir.root, return_variables=True,
                          edit_initial_variables=edit)
  if _interrupted(summary, config):
    print(f"xprompt {title}: stopped at step {summary['final_step']} (train.stop_after_steps); "
          "run the same command again to resume", flush=True)
    return None, None
  # The paper keeps the best dev-set checkpoint of each stage (train.early_stopping_metric;
  # without one, the last step).
  kept = summary.get("best_trainable") or summary["trainable"]
  save_tree(stage_dir.kept_trainable, kept)
  return _without_variables(summary), merge_variables(kept, summary["frozen"])


def rewinding_edit(stage1_trainable: Any, token_mask: np.ndarray,
                 piece_mask: np.ndarray) -> Callable[[Dict[str, Any]], Dict[str, Any]]:
  """`edit_initial_variables` for stage 3: rewound stage-1 trainable values, fixed masks."""
  rewound = flax.traverse_util.flatten_dict(
      xprompt.rewind_params(stage1_trainable, token_mask, piece_mask), sep="/")

  def edit(variables):
    params = dict(flax.traverse_util.flatten_dict(flax.core.unfreeze(variables["params"]),
                                                  sep="/"))
    for path, value in rewound.items():
      if path not in params or tuple(params[path].shape) != tuple(np.shape(value)):
        raise UserError(f"stage-1 parameter {path} {np.shape(value)} does not match the model "
                        "being rewound; was the gin config changed between stages? Use a fresh "
                        "MODEL_DIR")
      params[path] = jnp.asarray(value, params[path].dtype)
    masks = xprompt.set_masks(variables[xprompt.MASK_COLLECTION], token_mask, piece_mask)
    return {**variables, "params": flax.traverse_util.unflatten_dict(params, sep="/"),
            xprompt.MASK_COLLECTION: masks}

  return edit


def _load_masks(search_dir: XPromptSearchDir) -> Tuple[np.ndarray, np.ndarray]:
  return tuple(np.load(path, allow_pickle=False)
               for path in (search_dir.token_mask, search_dir.piece_mask))


def _combined_histories(stage1: Mapping[str, Any], search: Mapping[str, Any],
                        stage3: Mapping[str, Any]) -> Tuple[List[dict], List[dict]]:
  """One step axis across stages (stage 3 continues after stage 1), each entry tagged.

  Both stages start at the initial checkpoint's step (absolute steps, as in
  T5X); stage 3's steps are shifted to follow stage 1's last step.
  """
  end1 = stage1["final_step"]
  offset = end1 - stage3.get("initial_step", 0)
  key = search["metric_name"]
  train_history = ([{**h, "stage": "prompt_tuning"} for h in stage1["train_history"]] +
                   [{**h, "step": h["step"] + offset, "stage": "rewinding"}
                    for h in stage3["train_history"]])
  evals1 = [{**h, "stage": "prompt_tuning"} for h in stage1["eval_history"]]
  if not any(h["step"] == end1 and key in h for h in evals1):
    evals1.append({"step": end1, key: search["stages"]["prompt_tuning"], "stage": "prompt_tuning"})
  evals3 = [{**h, "step": h["step"] + offset, "stage": "rewinding"} for h in stage3["eval_history"]]
  end = offset + stage3["final_step"]
  if not any(h["step"] == end and key in h for h in evals3):
    evals3.append({"step": end, key: stage3["metric"], "stage": "rewinding"})
  pruned = {"step": end1, key: search["stages"]["pruning"], "stage": "pruning"}
  return train_history, [*evals1, pruned, *evals3]


# --- The driver -------------------------------------------------------------------


@gin.configurable
def run_xprompt(model_dir: Optional[str] = None, importance_batches: Optional[int] = None,
                per_example: bool = True, tolerance: Optional[float] = None,
                test_split: Optional[str] = None,
                token_ratios: Sequence[float] = xprompt.DEFAULT_RATIOS,
                piece_ratios: Sequence[float] = xprompt.DEFAULT_RATIOS,
                metric_name: Optional[str] = None,
                higher_is_better: bool = True) -> Dict[str, Any]:
  """Prompt tuning -> pruning search -> rewinding, resumable; returns the run summary.

  Args:
    model_dir: the run folder; defaults to `train.model_dir` (MODEL_DIR).
    importance_batches: training batches the importance scores average over;
      None (default) is one full pass over the training split.
    test_split: a split of the eval task that chooses nothing (e.g. 'test'):
      the unpruned, pruned and rewound prompts are also reported on it
      (`held_out_stages`). The validation numbers (`stages`) chose the
      sub-prompt, so `stages.pruning` is optimistic by construction.
    tolerance: None (default): a smaller sub-prompt is chosen only when it
      strictly improves the validation metric; a number t >= 0 also accepts
      one within t of the best.
    per_example: mean |gradient| of every example (the definition) or of each
      batch's mean loss (`xprompt.make_importance_fn`).
    token_ratios, piece_ratios: cumulative pruning ratios (paper: 0.1 … 0.9).
    metric_name: validation metric choosing the sub-prompt, `task/metric` or
      just `metric`; `None` uses `train.early_stopping_metric`, else the eval's
      only metric.
    higher_is_better: direction of `metric_name`.

  Returns:
    A JSON-ready dict (also written to `MODEL_DIR/xprompt_summary.json`):
    `stages` (validation metric after each stage), `metric_name`, `chosen`
    (ratios, sizes), `trainable_parameters` = `kept_parameters` (prompt values
    not pruned; the headline count), `prompt_parameters` (the full `P x E`
    stage 3 trained), `held_out_stages` (with `test_split`), `note`,
    `final_prompt` (`.npy` path), `report`, `heatmap`, `final_step` (stage-1 plus
    stage-3 steps), `train_history` / `eval_history` (stage 3 continuing stage 1's
    step axis; every entry has a `stage`), `stage_dirs`. When the trainer stops
    at `train.stop_after_steps`, returns `{"interrupted": stage, ...}` instead.
  """
  config = {**train_config(), "test_split": test_split}
  model_dir = model_dir or config["model_dir"]
  if not model_dir or model_dir is gin.REQUIRED:
    raise UserError("XPrompt needs a run folder; set --gin.MODEL_DIR=\"'/path/to/run'\"")
  checks.output_dir(model_dir, "MODEL_DIR")
  check_search_settings(token_ratios, piece_ratios, importance_batches)
  if metric_name is None:
    metric_name = config.get("early_stopping_metric")
  folder = XPromptDir(model_dir)
  stage1_dir, search_dir, stage3_dir = folder.stage1, folder.search, folder.stage3
  summary_path = folder.summary
  finished = fs.read_json(stage3_dir.stage_record)
  if finished is not None and fs.exists(summary_path):
    print(f"xprompt: all three stages of {model_dir} are finished; skipping "
          f"(final prompt {finished['final_prompt']})", flush=True)
    return fs.read_json(summary_path)
  _check_masks_configured()

  backbone: Optional[SearchContext] = None

  def get_backbone(trained: Optional[Dict[str, Any]] = None) -> SearchContext:
    """Built once; from a stage's final variables when this process trained one (no reload)."""
    nonlocal backbone
    if backbone is None:
      backbone = SearchContext(config, trained)
    return backbone

  # Stage 1: plain prompt tuning (masks at one).
  stage1 = fs.read_json(stage1_dir.stage_record)
  trained = None
  if stage1 is None:
    stage1, trained = _training_stage("stage 1/3: prompt tuning", stage1_dir, config)
    if stage1 is None:
      return {"interrupted": "prompt_tuning", "model_dir": model_dir,
              "stage_dirs": _stage_dirs(folder)}
    fs.write_json(stage1_dir.stage_record, stage1)
  else:
    print(f"xprompt stage 1/3: prompt tuning finished earlier ({_steps(stage1)} steps); "
          "skipping", flush=True)
  multihost.sync("xprompt stage 1 written")  # process 0 wrote the file every host reads
  stage1_trainable = load_tree(stage1_dir.kept_trainable)

  # Stage 2: importance scores and the pruning search.
  search = fs.read_json(search_dir.stage_record)
  if search is None:
    search = search_stage(get_backbone(trained), stage1_trainable, search_dir,
                           importance_batches=importance_batches, per_example=per_example,
                           tolerance=tolerance,
                           token_ratios=token_ratios, piece_ratios=piece_ratios,
                           metric_name=metric_name, higher_is_better=higher_is_better)
    fs.write_json(search_dir.stage_record, search)
  else:
    print(f"xprompt stage 2/3: pruning search finished earlier (chosen {search['chosen']}); "
          "skipping", flush=True)
  multihost.sync("xprompt stage 2 written")
  token_mask, piece_mask = _load_masks(search_dir)

  # Stage 3: rewinding and retraining with the masks fixed.
  stage3 = fs.read_json(stage3_dir.stage_record)
  if stage3 is None:
    trained = None
    if backbone is not None:
      backbone.release_variables()
    stage3, trained = _training_stage(
        "stage 3/3: rewinding", stage3_dir, config,
        edit=rewinding_edit(stage1_trainable, token_mask, piece_mask))
    if stage3 is None:
      return {"interrupted": "rewinding", "model_dir": model_dir,
              "stage_dirs": _stage_dirs(folder)}
    stage3.update(_finish(get_backbone(trained), trained, stage3, search, folder))
    fs.write_json(stage3_dir.stage_record, stage3)
  summary = _summary(folder, stage1, search, stage3, token_mask, piece_mask)
  fs.write_json(summary_path, summary)
  print(f"xprompt finished: {summary['metric_name']} " +
        ", ".join(f"{k}={v:.4f}" for k, v in summary["stages"].items()) +
        f"; final prompt {summary['final_prompt']}", flush=True)
  return summary


def check_search_settings(token_ratios: Sequence[float], piece_ratios: Sequence[float],
                          importance_batches: Optional[int]) -> None:
  """Refuses ratio schedules the search cannot run, before stage 1 trains."""
  for name, ratios in (("XPROMPT_TOKEN_RATIOS (run_xprompt.token_ratios)", token_ratios),
                       ("XPROMPT_PIECE_RATIOS (run_xprompt.piece_ratios)", piece_ratios)):
    example = f"--gin.{name.split()[1].strip('()')}=[0.1, 0.2, 0.3]"
    if isinstance(ratios, (str, bytes)) or not isinstance(ratios, Sequence):
      raise UserError(f"{name} must be a list of pruning ratios, got {ratios!r}; set e.g. {example}")
    for ratio in ratios:
      if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0 <= ratio <= 1:
        raise UserError(f"{name} holds {ratio!r}, but a pruning ratio is a fraction in [0, 1]; "
                        f"set e.g. {example}")
    if list(ratios) != sorted(ratios):
      raise UserError(f"{name} = {list(ratios)} must not decrease (the ratios are cumulative); "
                      f"set e.g. {example}")
  checks.optional_positive_int(importance_batches, "XPROMPT_IMPORTANCE_BATCHES "
                               "(run_xprompt.importance_batches)",
                               "--gin.XPROMPT_IMPORTANCE_BATCHES=8 (None: one full pass)")


def _check_masks_configured() -> None:
  """Fails before any training when the gin config has no XPromptMask."""
  model = build_model()
  abstract = abstract_variables(model, Partitioner())
  xprompt.get_masks(abstract.get(xprompt.MASK_COLLECTION, {}))


def _finish(backbone: SearchContext, trained: Dict[str, Any], stage3: Mapping[str, Any],
            search: Mapping[str, Any], folder: XPromptDir) -> Dict[str, Any]:
  """Stage-3 validation metric, the exported final prompt and the completed report.

  `trained` are the variables stage 3 ended with (its masks included).
  """
  variables = jax.device_put(trained, backbone.shardings)
  token_mask, piece_mask = (to_host(m) for m in
                            xprompt.get_masks(variables[xprompt.MASK_COLLECTION]))
  key = search["metric_name"]
  last = [h for h in stage3["eval_history"] if h["step"] == stage3["final_step"] and key in h]
  if stage3.get("best_metric") is not None:  # `trained` is the best evaluation's state
    metric = stage3["best_metric"]
  else:
    metric = last[-1][key] if last else backbone.evaluate(variables)[key]
  held_out = (backbone.evaluate(variables, held_out=True)[key]
              if backbone.test_evaluator is not None else None)
  prompt = backbone.ctx.exported_prompt(variables)
  kept = np.asarray(xprompt.effective_mask(jnp.asarray(token_mask), jnp.asarray(piece_mask),
                                           prompt.shape[-1]))
  prompt = np.where(kept > 0, prompt, 0.0).astype(np.float32)  # exact zeros where pruned
  path = write_prompt(folder.final_prompt, prompt)
  report_path = folder.search.report
  report = fs.read_json(report_path)
  report["stages"] = {**report["stages"], "rewinding": float(metric)}
  if held_out is not None:
    report["held_out_stages"] = {**search["held_out_stages"], "rewinding": float(held_out)}
  fs.write_json(report_path, report)
  print(f"xprompt stage 3/3: {key}={metric:.4f}; final prompt -> {path}", flush=True)
  return {"metric": float(metric), "held_out_metric": held_out, "final_prompt": path,
          "kept_parameters": int(np.sum(kept > 0))}


def _stage_dirs(folder: XPromptDir) -> Dict[str, str]:
  return {"prompt_tuning": folder.stage1.root, "pruning": folder.search.root,
          "rewinding": folder.stage3.root}


def _steps(stage: Mapping[str, Any]) -> int:
  """Steps a training stage ran (its final step minus the initial checkpoint's step)."""
  return stage["final_step"] - stage.get("initial_step", 0)


def _summary(folder: XPromptDir, stage1: Mapping[str, Any], search: Mapping[str, Any],
             stage3: Mapping[str, Any], token_mask: np.ndarray,
             piece_mask: np.ndarray) -> Dict[str, Any]:
  train_history, eval_history = _combined_histories(stage1, search, stage3)
  return {
      "model_dir": folder.root,
      "metric_name": search["metric_name"],
      "higher_is_better": search["higher_is_better"],
      "stages": {**search["stages"], "rewinding": stage3["metric"]},
      "chosen": search["chosen"],
      "token_mask": np.asarray(token_mask > 0, int).tolist(),
      "piece_mask": np.asarray(piece_mask > 0, int).tolist(),
      # The headline count is what the sub-prompt keeps; the trainer trained the full P x E.
      "trainable_parameters": stage3["kept_parameters"],
      "prompt_parameters": stage3["trainable_parameters"],
      "kept_parameters": stage3["kept_parameters"],
      "held_out_stages": ({**search.get("held_out_stages", {}),
                           "rewinding": stage3["held_out_metric"]}
                          if stage3.get("held_out_metric") is not None else {}),
      "note": search.get("note"),
      "final_prompt": stage3["final_prompt"],
      "report": folder.search.report,
      "heatmap": folder.search.heatmap,
      "final_step": stage1["final_step"] + _steps(stage3),
      "stage_steps": {"prompt_tuning": _steps(stage1), "rewinding": _steps(stage3)},
      "train_history": train_history,
      "eval_history": eval_history,
      "stage_dirs": _stage_dirs(folder),
  }
