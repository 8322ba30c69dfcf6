"""XLA's per-device memory of a run's train step, compiled before any weight exists.

The step is the one `trainer.train` runs (`run_setup.jit_train_step`), lowered
with `jax.ShapeDtypeStruct`s that carry the run's shardings: the variables'
shapes come from `jax.eval_shape` of the model's init, so T5 1.1 XXL compiles
for a 64-device mesh without a byte of weights. `prompt-tuning plan --compile`
prints it beside the estimate; `train` checks it before a checkpoint is read
when the device memory is known (`device_memory_limit`), and resolves
`NUM_MICROBATCHES='auto'` with it (`fitting_microbatches`).

What XLA reports is per device (one SPMD partition): arguments (frozen
weights, trainable parameters, optimizer state, the batch), outputs, the
outputs aliased to donated arguments (trainable and optimizer state, updated
in place), and temporaries (activations kept for the backward pass, scratch).
"""
import dataclasses
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import flax
import jax
import numpy as np
import optax
from flax import traverse_util

from prompt_tuning import plan as plan_lib
from prompt_tuning.errors import UserError
from prompt_tuning.models.t5 import T5
from prompt_tuning.train import initialize
from prompt_tuning.train.partitioning import Partitioner
from prompt_tuning.train.run_setup import jit_train_step, optimizer_layouts
from prompt_tuning.train.step import LossConfig
from prompt_tuning.train.trainable import split_variables

AUTO = "auto"
# The features of a train batch (`data._MODEL_FEATURES` plus `example_index`), all int32.
BATCH_FEATURES = ("encoder_input_tokens", "decoder_input_tokens", "decoder_target_tokens",
                  "decoder_loss_weights", "example_index")


@dataclasses.dataclass(frozen=True)
class StepMemory:
  """`compiled.memory_analysis()` of the train step, bytes per device."""
  argument_bytes: int
  output_bytes: int
  alias_bytes: int
  temp_bytes: int
  generated_code_bytes: int

  @property
  def device_bytes(self) -> int:
    """What one device holds while the step runs: arguments, the outputs not written in
    place of a donated argument, and temporaries."""
    return self.argument_bytes + self.output_bytes - self.alias_bytes + self.temp_bytes

  def as_dict(self) -> Dict[str, int]:
    return {**dataclasses.asdict(self), "device_bytes": self.device_bytes}


def _with_sharding(tree: Any, shardings: Any) -> Any:
  return jax.tree_util.tree_map(
      lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)


def abstract_step_arguments(model: T5, partitioner: Partitioner, patterns: Sequence[str],
                            optimizer: optax.GradientTransformation,
                            frozen_dtype: Optional[str], batch_size: int,
                            task_feature_lengths: Mapping[str, int]):
  """`(trainable, opt_state, frozen, batch, rng)` of the run's step as sharded
  `ShapeDtypeStruct`s, and the shardings `jit_train_step` needs: the backbone in
  `frozen_dtype` as `initialize_variables` loads it, the batch over `data`."""
  abstract, shardings = initialize.variable_shardings(model, partitioner)
  if frozen_dtype:
    paths = initialize.backbone_paths(model.config)
    flat = traverse_util.flatten_dict(flax.core.unfreeze(abstract["params"]), sep="/")
    flat = {k: jax.ShapeDtypeStruct(v.shape, np.dtype(frozen_dtype)) if k in paths else v
            for k, v in flat.items()}
    abstract = {**abstract, "params": traverse_util.unflatten_dict(flat, sep="/")}
  trainable, frozen = split_variables(abstract, patterns)
  trainable_sh, frozen_sh = split_variables(shardings, patterns)
  opt_state = jax.eval_shape(optimizer.init, trainable)
  opt_sh = optimizer_layouts(optimizer, trainable, trainable_sh, partitioner.replicated)
  inputs, targets = int(task_feature_lengths["inputs"]), int(task_feature_lengths["targets"])
  shapes = {k: (batch_size, targets) for k in BATCH_FEATURES}
  shapes.update(encoder_input_tokens=(batch_size, inputs), example_index=(batch_size,))
  batch = {k: jax.ShapeDtypeStruct(shape, np.int32, sharding=partitioner.data_sharding)
           for k, shape in shapes.items()}
  rng = jax.ShapeDtypeStruct((2,), np.uint32, sharding=partitioner.replicated)
  args = (_with_sharding(trainable, trainable_sh), _with_sharding(opt_state, opt_sh),
          _with_sharding(frozen, frozen_sh), batch, rng)
  return args, (trainable_sh, opt_sh, frozen_sh)


def step_memory(model: T5, partitioner: Partitioner, patterns: Sequence[str],
                optimizer: optax.GradientTransformation, frozen_dtype: Optional[str],
                batch_size: int, task_feature_lengths: Mapping[str, int],
                num_microbatches: int = 1, loss_config: Optional[LossConfig] = None
                ) -> StepMemory:
  """Compiles the run's train step for `partitioner`'s mesh (nothing is allocated) and
  returns XLA's memory of it per device."""
  args, (trainable_sh, opt_sh, frozen_sh) = abstract_step_arguments(
      model, partitioner, patterns, optimizer, frozen_dtype, batch_size, task_feature_lengths)
  step = jit_train_step(model, optimizer, partitioner, trainable_sh, opt_sh, frozen_sh,
                        num_microbatches, loss_config)
  with partitioner.context():
    compiled = step.lower(*args).compile()
  m = compiled.memory_analysis()
  if m is None:
    raise UserError(f"the {jax.default_backend()} backend reports no memory of a compiled "
                    "program; run `prompt-tuning plan --compile` (fake CPU devices) instead")
  return StepMemory(int(m.argument_size_in_bytes), int(m.output_size_in_bytes),
                    int(m.alias_size_in_bytes), int(m.temp_size_in_bytes),
                    int(m.generated_code_size_in_bytes))


def device_memory_limit(device_memory_gib: Optional[float] = None) -> Optional[int]:
  """Bytes one device may use: `device_memory_gib` when given, else what the first local
  device reports (`memory_stats()['bytes_limit']`: TPU and GPU), else None (CPU)."""
  if device_memory_gib is not None:
    return int(device_memory_gib * 2 ** 30)
  stats = jax.local_devices()[0].memory_stats()
  limit = (stats or {}).get("bytes_limit")
  return int(limit) if limit else None


def microbatch_candidates(batch_size: int, data_shards: int) -> List[int]:
  """Every microbatch count the trainer accepts for this batch and mesh, smallest first."""
  per_shard = batch_size // data_shards if batch_size % data_shards == 0 else 0
  return [m for m in range(1, per_shard + 1) if per_shard % m == 0]


def fitting_microbatches(measure: Callable[[int], int], candidates: Sequence[int], limit: int,
                         what: str, auto: bool) -> Tuple[int, int]:
  """`(count, bytes)`: the smallest of `candidates` whose `measure(count)` (bytes per device)
  is at most `limit`; a UserError naming what it needs when none is. `auto`: the candidates
  are every count 'auto' may choose (else the one the run set)."""
  used = None
  for count in candidates:
    used = measure(count)
    if used <= limit:
      return count, used
  if used is None:
    raise UserError(f"{what}: no microbatch count splits BATCH_SIZE evenly over the "
                    "data-parallel shards; choose a BATCH_SIZE that is a multiple of them")
  tried = (f"even with NUM_MICROBATCHES={count}, the most 'auto' can split the batch"
           if auto else f"with NUM_MICROBATCHES={count}")
  way_out = ("" if auto else "NUM_MICROBATCHES='auto' (a count that fits) or ")
  raise UserError(
      f"{what} needs {plan_lib.human_bytes(used)} per device by XLA {tried}, more than the "
      f"{plan_lib.human_bytes(limit)} of one device; try {way_out}a larger "
      "make_mesh.model_parallel_size, T5Config.remat='full', ACTIVATION_DTYPE='bfloat16' or "
      "train.frozen_dtype='bfloat16', or lower BATCH_SIZE or TASK_FEATURE_LENGTHS")


def check_run_fits(num_microbatches: Any, device_memory_gib: Optional[float], batch_size: int,
                   task_feature_lengths: Mapping[str, int], optimizer: optax.GradientTransformation,
                   frozen_dtype: Optional[str]) -> int:
  """`train`'s check before any weight is read: the run's step, compiled with abstract weights
  on this mesh, fits one device (`device_memory_limit`); returns the microbatch count to run
  ('auto': the smallest that fits). Nothing is compiled when the device memory is unknown
  (CPU without `train.device_memory_gib`) and the count is given."""
  limit = device_memory_limit(device_memory_gib)
  if limit is None:
    if num_microbatches == AUTO:
      raise UserError("NUM_MICROBATCHES='auto' picks the smallest count that fits one device, "
                      f"but the {jax.default_backend()} devices report no memory limit; bind "
                      "--gin.train.device_memory_gib=16 (say), or a count: --gin.NUM_MICROBATCHES=1")
    return num_microbatches
  # Imported here: `initialize` imports the trainer's modules, not the other way round.
  from prompt_tuning.train.partitioning import check_batch_size
  from prompt_tuning.train.trainable import trainable_patterns
  model = initialize.build_model()
  partitioner = Partitioner()
  patterns = trainable_patterns()

  def measure(count: int) -> int:
    return step_memory(model, partitioner, patterns, optimizer, frozen_dtype, batch_size,
                       task_feature_lengths, count).device_bytes

  auto = num_microbatches == AUTO
  if auto:
    candidates = microbatch_candidates(batch_size, partitioner.data_parallel_size)
  else:
    check_batch_size(batch_size, partitioner, num_microbatches)
    candidates = [num_microbatches]
  count, used = fitting_microbatches(measure, candidates, limit, "the train step", auto)
  print(f"train step: {plan_lib.human_bytes(used)} per device by XLA, of "
        f"{plan_lib.human_bytes(limit)}" + (f"; NUM_MICROBATCHES='auto': {count}" if auto else ""),
        flush=True)
  return count
