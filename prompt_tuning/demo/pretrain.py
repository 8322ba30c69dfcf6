"""Pretraining the demo's tiny T5 1.1 on the instruction mixture (full training, no prompt).

A short loop around the trainer's own compiled step (`compile_train_step`)
with every parameter trainable (`.*`); the result is saved with `save_backbone`, so prompt tuning
later loads it through `INITIAL_CHECKPOINT_PATH` exactly like a converted
T5X or Hugging Face checkpoint.
"""
import time
from typing import Any, Dict, List, Mapping

import jax
import optax

from prompt_tuning.io.backbone import save_backbone
from prompt_tuning.models.config import T5Config
from prompt_tuning.models.t5 import T5
from prompt_tuning.train import data as data_lib
from prompt_tuning.train import optim
from prompt_tuning.train.initialize import initialize_variables
from prompt_tuning.train.partitioning import Partitioner
from prompt_tuning.train.run_setup import RunContext, compile_train_step
from prompt_tuning.train.step import LossConfig

ALL_PARAMETERS = (".*",)


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
