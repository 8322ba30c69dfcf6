"""The best evaluation so far (`train.early_stopping_metric`), kept on disk, and early stopping.

Every improvement is written at once, so a run killed later keeps it and a
resume continues from it: `prompts/best.json` (step, metric, value), the
trainable tree as `best/trainable.npz` (for every method) and the `best`
exports (`prompts/best.npy`, `exports/best/`), which a resume checks against
`best/trainable.npz` and rebuilds from it when damaged.
"""
from typing import Any, Dict, Mapping, Optional

from prompt_tuning import fs
from prompt_tuning.errors import UserError
from prompt_tuning.train.checkpoints import load_tree, save_tree
from prompt_tuning.train.saves import Saves


def metric_key(metrics: Mapping[str, float], name: Optional[str],
               setting: str = "train.early_stopping_metric") -> str:
  """The key of `metrics` that `name` names: itself, or the one `task/name` when unique
  (`accuracy` names `super_glue_rte/accuracy`); None names the only metric. `setting` is
  the binding a failure names."""
  if name in metrics:
    return name
  matches = list(metrics) if name is None else [k for k in metrics if k.split("/")[-1] == name]
  if len(matches) == 1:
    return matches[0]
  raise UserError(f"metric {name!r} is not {'one' if not matches else 'a unique one'} of the eval "
                  f"metrics {sorted(metrics)}; set {setting} to one of them")


class EarlyStopping:
  """Tracks the best value of `metric`; stops when it has not improved for `patience` evaluations."""

  def __init__(self, metric: Optional[str], mode: str = "max", patience: Optional[int] = None):
    self.metric, self.mode, self.patience = metric, mode, patience
    self.best, self.bad_evals = None, 0

  def improved(self, metrics: Mapping[str, float]) -> bool:
    if not self.metric:
      return False
    value = metrics[metric_key(metrics, self.metric)]
    better = self.best is None or (value > self.best if self.mode == "max" else value < self.best)
    if better:
      self.best, self.bad_evals = value, 0
    else:
      self.bad_evals += 1
    return better

  def resume(self, record: Optional[Mapping[str, Any]], step: int) -> None:
    """Continues from the best recorded before `step` (so a resume never forgets it)."""
    if self.metric and record and record.get("metric") == self.metric and record["step"] <= step:
      self.best = record["value"]

  @property
  def should_stop(self) -> bool:
    return self.patience is not None and self.bad_evals >= self.patience


class BestSoFar(EarlyStopping):
  """`EarlyStopping` whose every improvement is saved in the run folder."""

  def __init__(self, saves: Saves, metric: Optional[str], mode: str = "max",
               patience: Optional[int] = None, resumed_at: Optional[int] = None):
    """`resumed_at`: the step a resumed run restarts at (it continues the best saved before it)."""
    super().__init__(metric, mode, patience)
    self.saves, self.run = saves, saves.run
    if resumed_at is not None:
      record = fs.read_json(self.run.best_record)
      self.resume(record, resumed_at)
      if self.best is not None:  # its exports are checked, and rebuilt, as the checkpoint's are
        saves.rebuild_exports("best", record["step"], self.trainable(), self.run.best_trainable)

  def update(self, step: int, metrics: Mapping[str, float], trainable: Any) -> None:
    """Counts the evaluation of `step`; saves `trainable` as the best when it improved."""
    if not self.improved(metrics):
      return
    self.saves.export("best", step, trainable)
    save_tree(self.run.best_trainable, trainable)
    fs.write_json(self.run.best_record, {"step": step, "metric": self.metric, "value": self.best})

  def stopping_line(self, step: int) -> str:
    return (f"early stopping at step {step}: {self.metric} has not improved for "
            f"{self.patience} evaluations (best {self.best})")

  def record(self) -> Optional[Dict[str, Any]]:
    """The saved best (`prompts/best.json`) when this run has one."""
    return fs.read_json(self.run.best_record) if self.best is not None else None

  def trainable(self) -> Dict[str, Any]:
    return load_tree(self.run.best_trainable)
