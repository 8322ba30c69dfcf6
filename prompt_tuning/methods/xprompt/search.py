"""XPrompt's stage 2 on one model: importance scores, the pruning search and its report.

`SearchContext` holds the run's model and variables (the same `build_run` as
`trainer.train`) with evaluation functions compiled once and reused for every
candidate mask; `search_stage` runs the token then piece rounds of
`masks.search` and writes the chosen masks and the report.
"""
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from prompt_tuning import fs, multihost
from prompt_tuning.errors import UserError
from prompt_tuning.methods.xprompt import masks as xprompt
from prompt_tuning.methods.xprompt.report import write_report
from prompt_tuning.run_dir import XPromptSearchDir
from prompt_tuning.train import data as data_lib
from prompt_tuning.train import evaluation
from prompt_tuning.train.best import metric_key
from prompt_tuning.train.initialize import build_model, variable_shardings
from prompt_tuning.multihost import to_host
from prompt_tuning.train.partitioning import Partitioner, check_batch_size
from prompt_tuning.train.run_setup import RunContext, build_run
from prompt_tuning.train.step import LossConfig, token_loss_sums
from prompt_tuning.train.trainable import merge_variables

IMPORTANCE_CHUNK = 32  # batches per compiled importance call


class SearchContext:
  """The run's model and variables (`build_run`, as in `trainer.train`) and jitted helpers.

  Built at most once per run; the evaluation functions compile once and are
  reused for every candidate mask and for the stage-3 prompt.
  """

  def __init__(self, config: Mapping[str, Any], variables: Optional[Dict[str, Any]] = None):
    """`variables`: those a trainer stage of this run ended with, else loaded here."""
    self.config = config
    eval_name = config["eval_mixture_or_task_name"] or config["mixture_or_task_name"]
    lengths = config["task_feature_lengths"]
    if variables is None:
      self.ctx = build_run(initial_checkpoint_path=config["initial_checkpoint_path"],
                           seed=config["seed"], mixture_or_task_names=[eval_name],
                           mixture_or_task_module=config["mixture_or_task_module"],
                           task_feature_lengths=lengths, frozen_dtype=config["frozen_dtype"])
    else:
      data_lib.import_task_modules(config["mixture_or_task_module"])
      model, partitioner = build_model(), Partitioner()
      shardings = variable_shardings(model, partitioner)[1]
      self.ctx = RunContext(model, partitioner, jax.device_put(variables, shardings), shardings,
                            jax.random.PRNGKey(config["seed"]), lengths)
    self.model, self.partitioner = self.ctx.model, self.ctx.partitioner
    self.shardings, self.variables = self.ctx.shardings, self.ctx.variables
    self.evaluator = evaluation.make_evaluator(eval_name, lengths, config["eval_split"],
                                               config["use_cached_tasks"],
                                               config["eval_num_examples"])
    self.fns = evaluation.EvalModelFns(self.model, self.partitioner, self.variables,
                                       self.shardings, max_decode_length=lengths["targets"],
                                       inputs_length=lengths["inputs"])
    # Held-out numbers come from a split that chose nothing (run_xprompt.test_split).
    self.test_evaluator = None
    if config.get("test_split"):
      self.test_evaluator = evaluation.make_evaluator(eval_name, lengths, config["test_split"],
                                                      config["use_cached_tasks"])

  def release_variables(self) -> None:
    """Drops the backbone held here, keeping the evaluator and the compiled functions.

    The next trainer stage then does not hold the backbone twice in device memory.
    """
    self.variables = self.fns.variables = None

  def with_trainable(self, trainable: Any) -> Dict[str, Any]:
    return jax.device_put(merge_variables(trainable, self.variables), self.shardings)

  def with_masks(self, variables: Dict[str, Any], token_mask: np.ndarray,
                 piece_mask: np.ndarray) -> Dict[str, Any]:
    masks = xprompt.set_masks(variables[xprompt.MASK_COLLECTION], token_mask, piece_mask)
    return jax.device_put({**variables, xprompt.MASK_COLLECTION: masks}, self.shardings)

  def evaluate(self, variables: Dict[str, Any], held_out: bool = False) -> Dict[str, float]:
    self.fns.variables = variables  # same structure and shardings: no recompilation
    evaluator = self.test_evaluator if held_out else self.evaluator
    return evaluation.run_evaluation(evaluator, self.fns, step=0)

  def importance_fn(self, per_example: bool) -> Callable:
    # The task loss alone: no z-loss, label smoothing or method loss terms.
    model, loss_config = self.model, LossConfig(z_loss=0.0, label_smoothing=0.0, extra_terms=())

    def mean_loss(params, masks, batch):
      variables = {"params": params, xprompt.MASK_COLLECTION: masks}
      loss_sum, sums = token_loss_sums(model, variables, batch, jax.random.PRNGKey(0), loss_config,
                                       enable_dropout=False)
      return loss_sum / jnp.maximum(sums["weight"], 1.0)

    return xprompt.make_importance_fn(mean_loss, per_example)

  def training_chunks(self, count: Optional[int]) -> List[Dict[str, np.ndarray]]:
    """Training batches for the importance scores, stacked in chunks (leaves `[n, B, ...]`).

    `count=None` is one full pass over the training split (the expectation
    `E_x` over the training data, as in the paper), else the first `count`
    batches of the run's data order. Chunks bound the host memory of a pass.
    """
    config = self.config
    local_batch = check_batch_size(config["batch_size"], self.partitioner)
    stream = data_lib.batches(config["mixture_or_task_name"], config["task_feature_lengths"],
                              config["train_split"], local_batch, seed=config["seed"],
                              num_epochs=1 if count is None else None,
                              use_cached=config["use_cached_tasks"])
    taken = list(stream) if count is None else [b for _, b in zip(range(count), stream)]
    if count is not None and len(taken) < count:
      raise UserError(f"{config['mixture_or_task_name']} has only {len(taken)} training batches; "
                      f"lower run_xprompt.importance_batches ({count})")
    return [{k: np.stack([b[k] for b in taken[i:i + IMPORTANCE_CHUNK]]) for k in taken[0]}
            for i in range(0, len(taken), IMPORTANCE_CHUNK)]

  def global_chunk(self, chunk: Dict[str, np.ndarray]) -> Dict[str, jax.Array]:
    """This host's rows of stacked batches (`[n, b, ...]`) -> global arrays `[n, B, ...]`.

    The batch axis is sharded over `data`, so the importance is the mean over
    every host's examples: each host passing its own rows as a plain (hence
    replicated) array would score its own batches only, and hosts would prune
    differently.
    """
    sharding = NamedSharding(self.partitioner.mesh, PartitionSpec(None, "data"))
    return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in chunk.items()}


def search_stage(backbone: SearchContext, stage1_trainable: Any, search_dir: XPromptSearchDir,
                 *, importance_batches: Optional[int], per_example: bool,
                 token_ratios: Sequence[float], piece_ratios: Sequence[float],
                 metric_name: Optional[str], higher_is_better: bool,
                 tolerance: Optional[float] = None) -> Dict[str, Any]:
  """Stage 2: importance scores, token then piece rounds, report and chosen masks."""
  print(f"=== xprompt stage 2/3: pruning search -> {search_dir} ===", flush=True)
  variables = backbone.with_trainable(stage1_trainable)
  token_ones, piece_ones = (np.ones_like(to_host(m)) for m in
                            xprompt.get_masks(variables[xprompt.MASK_COLLECTION]))
  importance = backbone.importance_fn(per_example)
  chunks = backbone.training_chunks(importance_batches)
  sizes = [len(jax.tree_util.tree_leaves(c)[0]) for c in chunks]
  print(f"xprompt importance over {sum(sizes)} training batches"
        f"{' (one full pass)' if importance_batches is None else ''} "
        f"({'per example' if per_example else 'per batch'})", flush=True)
  resolved = {}

  def score_fn(token_mask, piece_mask):
    masked = backbone.with_masks(variables, token_mask, piece_mask)
    total = None
    for chunk, size in zip(chunks, sizes):  # equal-size batches: weight chunk means by size
      with backbone.partitioner.context():
        scores = importance(masked["params"], masked[xprompt.MASK_COLLECTION],
                            backbone.global_chunk(chunk))
      scores = [to_host(s) * (size / sum(sizes)) for s in xprompt.get_masks(scores)]
      total = scores if total is None else [t + s for t, s in zip(total, scores)]
    return tuple(total)

  def evaluate_fn(token_mask, piece_mask):
    metrics = backbone.evaluate(backbone.with_masks(variables, token_mask, piece_mask))
    if "key" not in resolved:
      resolved["key"] = metric_key(metrics, metric_name, "run_xprompt.metric_name")
    return metrics[resolved["key"]]

  result = xprompt.search(score_fn, evaluate_fn, token_ones, piece_ones, token_ratios,
                          piece_ratios, higher_is_better,
                          log=lambda line: print(line, flush=True), tolerance=tolerance)
  stages = {"prompt_tuning": result.candidates[0].metric, "pruning": result.best.metric}
  held_out = {}
  if backbone.test_evaluator is not None:
    for stage, chosen in (("prompt_tuning", result.candidates[0]), ("pruning", result.best)):
      metrics = backbone.evaluate(backbone.with_masks(variables, chosen.token_mask,
                                                      chosen.piece_mask), held_out=True)
      held_out[stage] = metrics[resolved["key"]]
    print(f"xprompt held-out {resolved['key']}: {held_out}", flush=True)
  # Every host must go on with the same masks (stage 3 trains with them on every host).
  multihost.check_same_on_hosts("XPrompt's chosen masks (run_xprompt)",
                                result.best.token_mask, result.best.piece_mask)
  paths = write_report(search_dir, result, stages, resolved["key"], higher_is_better)
  for path, mask in ((search_dir.token_mask, result.best.token_mask),
                     (search_dir.piece_mask, result.best.piece_mask)):
    fs.write_on_first_host(path,
                           lambda f, m=mask: np.save(f, m.astype(np.float32), allow_pickle=False))
  multihost.sync("xprompt report written")  # process 0 wrote it; every host reads it
  report = fs.read_json(paths["report"])
  print(f"xprompt chosen: {report['chosen']}", flush=True)
  return {"metric_name": resolved["key"], "higher_is_better": higher_is_better,
          "stages": stages, "held_out_stages": held_out, "note": report["note"],
          "chosen": report["chosen"], **paths}
