"""Console progress, TensorBoard summaries and the operative gin config of a run."""
import os
import time
from typing import Dict, Optional

import gin
import jax


class Progress:
  """One console line per log: step, loss, steps/s and ETA."""

  def __init__(self, start_step: int, total_steps: int):
    self.total = total_steps
    self.last_step, self.last_time = start_step, time.time()

  def restart_clock(self, step: int) -> None:
    """Excludes time spent outside training steps (eval, checkpoints) from the rate."""
    self.last_step, self.last_time = step, time.time()

  def line(self, step: int, metrics: Dict[str, float]) -> str:
    now = time.time()
    rate = (step - self.last_step) / max(now - self.last_time, 1e-9)
    self.last_step, self.last_time = step, now
    eta = (self.total - step) / rate if rate > 0 else float("inf")
    shown = " ".join(f"{k}={metrics[k]:.4g}" for k in ("loss", "accuracy", "grad_norm",
                                                       "learning_rate") if k in metrics)
    return f"step {step}/{self.total} {shown} | {rate:.2f} steps/s | ETA {_duration(eta)}"


def _duration(seconds: float) -> str:
  if seconds == float("inf"):
    return "?"
  seconds = int(seconds)
  return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class Writer:
  """TensorBoard scalars under MODEL_DIR (first host only)."""

  def __init__(self, model_dir: str):
    from clu import metric_writers
    self._writer = metric_writers.create_default_writer(
        model_dir, just_logging=jax.process_index() > 0, asynchronous=False)

  def scalars(self, step: int, values: Dict[str, float]) -> None:
    self._writer.write_scalars(step, values)

  def close(self) -> None:
    self._writer.flush()
    self._writer.close()


def write_operative_config(model_dir: str) -> Optional[str]:
  """`MODEL_DIR/config.gin`: the gin bindings the run actually used."""
  if jax.process_index() != 0:
    return None
  from prompt_tuning.train.checkpoints import atomic_write
  path = os.path.join(model_dir, "config.gin")
  atomic_write(path, lambda f: f.write(gin.operative_config_str().encode()))
  return path
