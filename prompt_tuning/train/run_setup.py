"""One run's setup, shared by every entry point: train, eval, infer, method drivers, demo, bench.

    build_run(...) -> RunContext
      tasks imported and checked -> model (gin `build_model`) -> mesh + Partitioner
      -> variables: backbone from the checkpoint (sharded, frozen) + new variables from init
    RunContext.split(patterns) -> Split: trainable / frozen trees and their shardings
    compile_train_step(ctx, split, optimizer) -> the jitted, sharded step and its optimizer state

Everything that differs between runs of the same config (the seed) enters as
one root key: `fold_in(key, 0)` initializes the variables, `fold_in(key, 1)`
then the step number gives each step's dropout key.
"""
import dataclasses
from typing import Any, Callable, Dict, Mapping, Optional, Sequence

import jax
import numpy as np
import optax

from prompt_tuning import checks
from prompt_tuning.models import memory_bound
from prompt_tuning.models.t5 import T5
from prompt_tuning.prompts.prompt import encoder_prompt
from prompt_tuning.train import optim
from prompt_tuning.train.initialize import build_model, initialize_variables
from prompt_tuning.multihost import to_host
from prompt_tuning.train.partitioning import Partitioner
from prompt_tuning.train.step import LossConfig, make_train_step
from prompt_tuning.train.trainable import merge_variables, split_variables

Variables = Dict[str, Any]


@dataclasses.dataclass
class Split:
  """Trainable parameters and frozen variables of a run, with their shardings."""
  patterns: Sequence[str]
  trainable: Variables
  frozen: Variables
  trainable_shardings: Variables
  frozen_shardings: Variables

  def merged(self, trainable: Optional[Variables] = None) -> Variables:
    """All variables, with `trainable` (default: the split's own) in place."""
    return merge_variables(self.trainable if trainable is None else trainable, self.frozen)

  @property
  def shardings(self) -> Variables:
    return merge_variables(self.trainable_shardings, self.frozen_shardings)


@dataclasses.dataclass
class RunContext:
  """What every entry point of a run needs: the model, its mesh and its variables.

  Attributes:
    model: the `T5` of the run (with its prompt, reparameterizations, extras).
    partitioner: mesh and logical-axis rules.
    variables: every variable, sharded: `{'params': ..., other collections}`.
    shardings: the matching tree of `NamedSharding`s.
    rng: the run's root key (`PRNGKey(seed)`).
    task_feature_lengths: `{'inputs': L, 'targets': Lt}` (None when not given).
  """
  model: T5
  partitioner: Partitioner
  variables: Variables
  shardings: Variables
  rng: jax.Array
  task_feature_lengths: Optional[Mapping[str, int]] = None

  @property
  def prompt_length(self) -> int:
    return prompt_length(self.model)

  def check_pass_fits(self, global_batch: int, what: str, way_out: str,
                      decoding: bool = False, copies: int = 1) -> None:
    """Refuses, before any data is read, a pass over `global_batch` examples padded to
    `task_feature_lengths` (plus the prompt) that cannot fit one device's memory: a
    `models.memory_bound` lower bound, on the batch's share of one data shard."""
    lengths = self.task_feature_lengths
    mesh = self.partitioner.mesh.shape
    rows = -(-global_batch // mesh["data"])
    shape = memory_bound.Pass(rows, lengths["inputs"] + self.prompt_length, lengths["targets"],
                              decoding, copies, head_shards=mesh["model"])
    memory_bound.check_fits(self.model.config, shape, what, way_out)

  def split(self, patterns: Sequence[str]) -> Split:
    trainable, frozen = split_variables(self.variables, patterns)
    trainable_sh, frozen_sh = split_variables(self.shardings, patterns)
    return Split(tuple(patterns), trainable, frozen, trainable_sh, frozen_sh)

  def step_rng(self, step: int) -> jax.Array:
    """The dropout key of train step `step` (independent of resumption)."""
    return jax.random.fold_in(jax.random.fold_in(self.rng, 1), step)

  def exported_prompt(self, variables: Optional[Variables] = None):
    """The prompt the encoder sees, `[P, E]` float32 numpy; a multi-task prompt gives
    `{task name: [P, E]}` (each task's combined prompt). None without a prompt, when it is
    generated from each input (its generator's parameters are exported instead), or for
    per-layer prompts (the input prompt alone would evaluate wrongly; their run's
    `exports/step_N`, DELTAS_FILE, holds every layer's prompt)."""
    prompt = self.model.prompt
    if (prompt is None or hasattr(prompt, "layer")
        or not (hasattr(prompt, "value") or hasattr(prompt, "task_prompts"))):
      return None
    variables = self.variables if variables is None else variables
    value = to_host(encoder_prompt(self.model, variables)).astype(np.float32)
    if hasattr(self.model.prompt, "task_prompts"):
      return dict(zip(self.model.prompt.tasks, value))
    return value


def prompt_length(model: T5) -> int:
  """The prompt's length P (0 without a prompt); a UserError unless it is an integer >= 1."""
  if model.prompt is None or not hasattr(model.prompt, "length"):
    return 0
  return checks.positive_int(model.prompt.length, "PROMPT_LENGTH (Prompt.length)",
                             "--gin.PROMPT_LENGTH=100")


def build_run(*, initial_checkpoint_path: Optional[str] = None, seed: int = 0,
              mixture_or_task_names: Sequence[str] = (),
              mixture_or_task_module: Optional[Sequence[str]] = None,
              task_feature_lengths: Optional[Mapping[str, int]] = None,
              frozen_dtype: Optional[str] = None, model: Optional[T5] = None,
              edit_initial_variables: Optional[Callable[[Variables], Variables]] = None,
              data_splits: Optional[Mapping[str, Sequence[str]]] = None) -> RunContext:
  """Checks the run's tasks and lengths, then builds the model and loads its variables.

  Args:
    initial_checkpoint_path: the backbone (backbone folder, T5X or HF); None
      initializes it randomly (smoke tests only).
    seed: the root key of the run.
    mixture_or_task_names: tasks the run reads; checked before anything loads.
    mixture_or_task_module: modules registering them (`MIXTURE_OR_TASK_MODULE`).
    task_feature_lengths: checked against the prompt length.
    frozen_dtype: cast the backbone to this dtype on load (e.g. 'bfloat16').
    model: defaults to the gin-configured `build_model()`.
    edit_initial_variables: maps the freshly built variables to new ones of the
      same structure (how XPrompt rewinds its prompt and fixes its masks).
    data_splits: task or mixture -> the splits the run reads; each must have
      data (`data.check_data_available`) before the backbone loads.
  """
  if (mixture_or_task_module or mixture_or_task_names or data_splits
      or task_feature_lengths is not None):
    # Imported only here: it brings TensorFlow and SeqIO (~750 MB resident), which a
    # run without tasks (`prompt-tuning bench`) does not need.
    from prompt_tuning.train import data as data_lib  # pylint: disable=g-import-not-at-top
    data_lib.import_task_modules(mixture_or_task_module)
    for name in mixture_or_task_names:
      data_lib.get_mixture_or_task(name)
    for name, splits in (data_splits or {}).items():
      data_lib.check_data_available(name, splits)
  model = model if model is not None else build_model()
  length = prompt_length(model)  # checked before any variable exists
  if task_feature_lengths is not None:
    data_lib.validate_feature_lengths(task_feature_lengths)
  partitioner = Partitioner()
  rng = jax.random.PRNGKey(seed)
  variables, shardings = initialize_variables(model, partitioner, initial_checkpoint_path,
                                              jax.random.fold_in(rng, 0), frozen_dtype)
  if edit_initial_variables is not None:
    variables = jax.device_put(edit_initial_variables(variables), shardings)
  return RunContext(model, partitioner, variables, shardings, rng,
                    dict(task_feature_lengths) if task_feature_lengths else None)


def optimizer_layouts(optimizer: optax.GradientTransformation, trainable: Any, layouts: Any,
                      replicated: Any) -> Any:
  """The layout (a sharding, or a PartitionSpec for `plan`) of every optimizer-state leaf.

  Follows the state's tree structure (`optax.tree_map_params`), never shapes
  across parameters: a state leaf that mirrors a parameter with the same shape
  takes that parameter's layout; factored moments (Adafactor's row/column
  statistics) and counters are small and replicated.

  Args:
    optimizer: the optax transformation.
    trainable: the trainable tree (arrays or `jax.ShapeDtypeStruct`s).
    layouts: the trainable tree's layouts, same structure.
    replicated: the layout of everything else.
  """
  abstract = jax.eval_shape(optimizer.init, trainable)

  def leaf_layout(state_leaf, param, layout):
    if isinstance(state_leaf, optax.MaskedNode):  # a group of `partitioned` that skips it
      return state_leaf
    same = tuple(getattr(state_leaf, "shape", ())) == tuple(param.shape)
    return layout if same else replicated

  return optax.tree_map_params(optimizer, leaf_layout, abstract, trainable, layouts,
                               transform_non_params=lambda _: replicated,
                               is_leaf=lambda x: isinstance(x, optax.MaskedNode))


def abstract_arrays(tree: Any, shardings: Any) -> Any:
  """`jax.ShapeDtypeStruct`s of `tree`'s leaves carrying `shardings` (restore targets)."""
  return jax.tree_util.tree_map(
      lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)


@dataclasses.dataclass
class CompiledStep:
  """The jitted train step of a run and what it needs: `step(trainable, opt_state, frozen,
  batch, rng) -> (trainable, opt_state, metrics)`, trainable and opt_state donated."""
  step: Callable
  opt_state: Any
  opt_shardings: Any


def jit_train_step(model: T5, optimizer: optax.GradientTransformation, partitioner: Partitioner,
                   trainable_shardings: Any, opt_shardings: Any, frozen_shardings: Any,
                   num_microbatches: int = 1, loss_config: Optional[LossConfig] = None) -> Callable:
  """The jitted, sharded train step `trainer.train` runs; `step_memory` lowers this same
  function with abstract arguments to read XLA's memory before any weight exists."""
  return jax.jit(
      make_train_step(model, optimizer, loss_config or LossConfig(), num_microbatches),
      in_shardings=(trainable_shardings, opt_shardings, frozen_shardings,
                    partitioner.data_sharding, partitioner.replicated),
      out_shardings=(trainable_shardings, opt_shardings, partitioner.replicated),
      donate_argnums=(0, 1))


def compile_train_step(ctx: RunContext, split: Split, optimizer: optax.GradientTransformation,
                       num_microbatches: int = 1, loss_config: Optional[LossConfig] = None,
                       start_step: int = 0) -> CompiledStep:
  """The sharded, jitted train step of `trainer.train` (also what `bench` times).

  The fresh optimizer state's global-step counters start at `start_step` (the
  initial checkpoint's step: `optim.start_at_step`), as T5X's train state does.
  """
  partitioner = ctx.partitioner
  opt_sh = optimizer_layouts(optimizer, split.trainable, split.trainable_shardings,
                             partitioner.replicated)
  opt_state = jax.jit(lambda t: optim.start_at_step(optimizer.init(t), start_step),
                      out_shardings=opt_sh)(split.trainable)
  step = jit_train_step(ctx.model, optimizer, partitioner, split.trainable_shardings, opt_sh,
                        split.frozen_shardings, num_microbatches, loss_config)
  return CompiledStep(step, opt_state, opt_sh)
