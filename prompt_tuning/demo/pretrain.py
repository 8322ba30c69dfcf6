"""The demo's backbone: a tiny T5 1.1 pretrained on the instruction mixture (no prompt).

A short loop around the trainer's own compiled step (`compile_train_step`)
with every parameter trainable (`.*`); the result is saved with `save_backbone`, so prompt tuning
later loads it through `INITIAL_CHECKPOINT_PATH` exactly like a converted
T5X or Hugging Face checkpoint. `DemoBackbone` is that backbone as a value the
demo uses and hands to the parameter-budget sweep (`runs/sweep.gin`).
"""
import dataclasses
import shutil
import time
from typing import Any, Dict, List, Mapping, Optional

import gin
import jax
import optax

from prompt_tuning.demo import tasks
from prompt_tuning.io.backbone import is_backbone, save_backbone
from prompt_tuning.models.config import T5Config
from prompt_tuning.models.t5 import T5
from prompt_tuning.train import data as data_lib
from prompt_tuning.train import optim
from prompt_tuning.train.initialize import initialize_variables
from prompt_tuning.train.partitioning import Partitioner
from prompt_tuning.train.run_setup import RunContext, compile_train_step
from prompt_tuning.train.step import LossConfig

ALL_PARAMETERS = (".*",)


@gin.configurable
def demo_backbone(vocab_size: int = 264, emb_dim: int = 64, num_heads: int = 4, head_dim: int = 16,
                  mlp_dim: int = 128, num_layers: int = 2) -> T5Config:
  """The tiny T5 1.1 the demo pretrains (byte vocabulary: 259 ids, padded)."""
  return T5Config(vocab_size=vocab_size, emb_dim=emb_dim, num_heads=num_heads, head_dim=head_dim,
                  mlp_dim=mlp_dim, num_encoder_layers=num_layers, num_decoder_layers=num_layers,
                  relative_attention_num_buckets=16, relative_attention_max_distance=32)


@gin.configurable
@dataclasses.dataclass(frozen=True)
class DemoBackbone:
  """The demo's backbone (`demo_backbone()`), pretrained into a folder unless one is there.

  Attributes:
    steps, batch_size, learning_rate, seed: of the pretraining.
    feature_lengths: `{'inputs': L, 'targets': Lt}` of the pretraining batches.
  """
  steps: int = 800
  batch_size: int = 64
  learning_rate: float = 3e-3
  seed: int = 0
  feature_lengths: Optional[Mapping[str, int]] = None

  @property
  def config(self) -> T5Config:
    return demo_backbone()

  def ensure(self, folder: str) -> Dict[str, Any]:
    """Pretrains into `folder` unless a complete backbone is there; the pretraining record."""
    if is_backbone(folder):
      print(f"reusing the pretrained backbone in {folder} (delete it to pretrain again)")
      return {"history": [], "wall_s": 0.0, "steps": 0, "reused": True}
    shutil.rmtree(folder, ignore_errors=True)  # an interrupted save
    print(f"pretraining a tiny T5 1.1 on {tasks.PRETRAIN_MIXTURE} "
          f"({', '.join(t + ':' for t in tasks.OPERATIONS)}) for {self.steps} steps")
    return pretrain_backbone(folder, self.config, tasks.PRETRAIN_MIXTURE,
                             dict(self.feature_lengths or {"inputs": 16, "targets": 8}),
                             self.steps, self.batch_size, self.learning_rate, seed=self.seed)


def pretrain_backbone(path: str, config: T5Config, mixture: str,
                      task_feature_lengths: Mapping[str, int], steps: int, batch_size: int,
                      learning_rate: float, seed: int = 0, log_every: int = 100
                      ) -> Dict[str, Any]:
  """Trains all parameters of `T5(config)` on `mixture`, saves them to `path`.

  Returns:
    {'history': [{'step', 'loss', 'accuracy'}...], 'wall_s', 'steps', 'parameters'}.
  """
  start = time.time()
  model = T5(config, prompt=None)
  partitioner = Partitioner()
  variables, shardings = initialize_variables(model, partitioner, None, jax.random.PRNGKey(seed))
  ctx = RunContext(model, partitioner, variables, shardings, jax.random.PRNGKey(seed))
  split = ctx.split(ALL_PARAMETERS)
  schedule = optax.warmup_cosine_decay_schedule(0.0, learning_rate, max(1, steps // 20), steps,
                                                learning_rate * 0.05)
  optimizer = optim.adamw(learning_rate=schedule, weight_decay=0.0, max_grad_norm=1.0)
  compiled = compile_train_step(ctx, split, optimizer, loss_config=LossConfig(z_loss=0.0))
  params, opt_state, step_fn = split.trainable, compiled.opt_state, compiled.step
  batches = data_lib.batches(mixture, task_feature_lengths, "train", batch_size, seed=seed)
  rng = jax.random.PRNGKey(seed + 1)
  history: List[Dict[str, float]] = []
  for step in range(1, steps + 1):
    with partitioner.context():
      params, opt_state, metrics = step_fn(params, opt_state, split.frozen,
                                           partitioner.shard_batch(next(batches)),
                                           jax.random.fold_in(rng, step))
    if step % log_every == 0 or step == steps:
      m = jax.device_get(metrics)
      history.append({"step": step, "loss": float(m["loss"]), "accuracy": float(m["accuracy"])})
      print(f"pretrain step {step}/{steps}: loss={m['loss']:.4f} "
            f"token_accuracy={m['accuracy']:.4f} ({time.time() - start:.0f}s)", flush=True)
  save_backbone(path, config, jax.device_get(params),
                source={"kind": "demo_pretraining", "mixture": mixture, "steps": steps})
  return {"history": history, "wall_s": time.time() - start, "steps": steps,
          "parameters": int(sum(x.size for x in jax.tree_util.tree_leaves(params)))}
