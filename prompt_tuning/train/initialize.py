"""Building the model and its variables on a mesh: backbone loaded once, new variables on top.

The *backbone* is the set of parameter paths of a plain `T5` of the run's
config; a checkpoint must hold all of them, with the right shapes, and is
never asked for anything else. Every other variable the model defines (the
prompt, reparameterization MLPs, XPrompt masks, LoRA pairs, InfoPrompt
critics, ...) is *new*: created by the model's own initializers.

Order matters: the backbone is restored straight into its shardings, then the
new variables are created by one model pass with the real backbone in place,
so vocabulary- and label-based prompt initializers see pretrained embeddings.
"""
import functools
import logging
from typing import Any, Callable, Dict, FrozenSet, List, Mapping, Optional, Tuple, Union

import flax
import flax.linen as nn
from flax import traverse_util
import gin
import jax
import jax.numpy as jnp
import numpy as np

from prompt_tuning import fs, host_memory
from prompt_tuning.errors import UserError
from prompt_tuning.io.backbone import backbone_shapes
from prompt_tuning.models.config import T5Config
from prompt_tuning.models.deltas import NO_DELTAS, DeltaPlan
from prompt_tuning.models.t5 import T5
from prompt_tuning.train.partitioning import Partitioner

Variables = Dict[str, Any]
BACKBONE_COLLECTION = "params"


@gin.configurable
def build_model(model_config: T5Config = gin.REQUIRED, prompt: Optional[nn.Module] = None,
                extras: Mapping[str, Callable[[], nn.Module]] = None,
                deltas: Union[DeltaPlan, Callable[[T5Config], DeltaPlan], None] = None,
                dropout_rate: Optional[float] = None) -> T5:
  """The T5 model of a run (gin: `build_model.model_config`, `.prompt`, `.extras`, `.deltas`).

  `extras` maps a name to a module factory (e.g. `{'info': @infoprompt_heads()}`): a
  method's own parameters under `<name>/` (see `T5.extras`). `deltas` is a
  `DeltaPlan` or a function of the model config returning one (e.g.
  `@apet_deltas`, whose positions depend on the model's shapes). `dropout_rate`
  (T5X's `DROPOUT_RATE`, bound by the run files: 0.1 to fine-tune as T5X's
  `finetune.gin`, 0.0 to evaluate) replaces the config's; it is a training
  choice, not a property of the backbone checkpoint.
  """
  if dropout_rate is not None:
    if (isinstance(dropout_rate, bool) or not isinstance(dropout_rate, (int, float))
        or not 0.0 <= dropout_rate < 1.0):
      raise UserError(f"DROPOUT_RATE (build_model.dropout_rate) = {dropout_rate!r} is not a rate "
                      "in [0, 1); e.g. --gin.DROPOUT_RATE=0.1 (T5X's fine-tuning value)")
    model_config = model_config.replace(dropout_rate=float(dropout_rate))
  if deltas is not None and not isinstance(deltas, DeltaPlan):
    deltas = deltas(model_config)
  return T5(model_config, prompt=prompt, deltas=deltas or NO_DELTAS,
            extras=tuple(sorted((extras or {}).items())))


def model_config_bindings(config: T5Config) -> List[str]:
  """Gin bindings that make `build_model` build `config` (for runs configured in code)."""
  out = ["build_model.model_config = @T5Config()"]
  for key, value in config.to_dict().items():
    out.append(f"T5Config.{key} = {tuple(value)!r}" if isinstance(value, list)
               else f"T5Config.{key} = {value!r}")
  return out


def _dummy_inputs(batch: int = 1, length: int = 4):
  tokens = jnp.ones((batch, length), jnp.int32)
  return tokens, tokens


def abstract_variables(model: T5, partitioner: Partitioner) -> Any:
  """Shapes and logical partitioning of every variable, without allocating (boxed)."""
  enc, dec = _dummy_inputs()
  with partitioner.context():
    return jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), enc, dec))


def variable_shardings(model: T5, partitioner: Partitioner) -> Tuple[Any, Any]:
  """(unboxed abstract variables, matching tree of NamedShardings)."""
  boxed = abstract_variables(model, partitioner)
  return nn.meta.unbox(boxed), partitioner.shardings_of(boxed)


@functools.lru_cache(maxsize=8)
def backbone_paths(config: T5Config) -> FrozenSet[str]:
  """The `params` paths of a plain T5 of `config`: exactly what a checkpoint must hold."""
  return frozenset(traverse_util.flatten_dict(flax.core.unfreeze(backbone_shapes(config)),
                                              sep="/"))


def split_backbone(tree: Variables, paths: FrozenSet[str]) -> Tuple[Variables, Variables]:
  """`{'params': ..., other collections}` -> (backbone params, every new variable).

  Backbone params come without the collection level; the new variables keep
  it (`{'params': {'prompt': ...}, 'prompt_masks': ...}`), empty parts dropped.
  """
  params = traverse_util.flatten_dict(flax.core.unfreeze(tree[BACKBONE_COLLECTION]), sep="/")
  backbone = traverse_util.unflatten_dict({k: v for k, v in params.items() if k in paths}, sep="/")
  new_params = {k: v for k, v in params.items() if k not in paths}
  new = {c: t for c, t in tree.items() if c != BACKBONE_COLLECTION and t}
  if new_params:
    new[BACKBONE_COLLECTION] = traverse_util.unflatten_dict(new_params, sep="/")
  return backbone, new


def identify_checkpoint(path: str) -> str:
  """'backbone' (ours), 't5x' or 'hf' — by the files in the folder."""
  from prompt_tuning.io.sources import identify
  return identify(path, "INITIAL_CHECKPOINT_PATH")


def checkpoint_step(path: Optional[str]) -> int:
  """The training step a checkpoint carries: `TRAIN_STEPS` counts from it, as in T5X.

  A T5X checkpoint stores it (`checkpoint_1100000`: 1,100,000); a backbone
  folder records it in `config.json`'s `source.step` when `prompt-tuning
  convert` read a T5X checkpoint; Hugging Face folders, other backbone
  folders and a random backbone (None) carry none: 0.
  """
  if not path:
    return 0
  kind = identify_checkpoint(path)
  if kind == "t5x":
    from prompt_tuning.io.t5x import read_t5x_step
    return read_t5x_step(path)
  if kind == "hf":
    return 0
  from prompt_tuning.io.backbone import CONFIG_FILE
  meta = fs.read_json(fs.join(path, CONFIG_FILE)) or {}
  source = meta.get("source") or {}
  if "step" in source:
    return int(source["step"])
  if source.get("format") == "t5x" and path not in _warned_stepless:
    _warned_stepless.add(path)
    logging.warning("backbone %s was converted from a T5X checkpoint before conversions recorded "
                    "its step, so TRAIN_STEPS counts from 0 here; re-run `prompt-tuning convert` "
                    "to count from the checkpoint's step as T5X does", path)
  return 0


_warned_stepless = set()


def load_backbone_params(path: str, target: Any, dtype: Optional[str] = None) -> Variables:
  """Reads any supported checkpoint straight into `target`'s shardings, checking shapes."""
  kind = identify_checkpoint(path)
  if kind == "backbone":
    from prompt_tuning.io.backbone import load_backbone
    return load_backbone(path, target, dtype=dtype)[1]
  if kind == "t5x":
    from prompt_tuning.io.t5x import read_t5x_checkpoint
    return read_t5x_checkpoint(path, target, dtype=dtype)
  from prompt_tuning.io.backbone import check_tree_shapes
  from prompt_tuning.io.hf import load_hf
  _, params = load_hf(path)
  check_tree_shapes(params, target, what=f"Hugging Face checkpoint {path}")
  return jax.tree_util.tree_map(
      lambda x, t: jax.device_put(np.asarray(x, dtype or t.dtype), t.sharding), params, target)


def initialize_variables(model: T5, partitioner: Partitioner, initial_checkpoint_path: Optional[str],
                         rng: jax.Array, frozen_dtype: Optional[str] = None) -> Tuple[Variables, Any]:
  """All variables of `model`, sharded: backbone from the checkpoint, the rest created by init.

  Returns:
    (variables, shardings), both `{'params': ..., other collections}`.
  """
  abstract, shardings = variable_shardings(model, partitioner)
  paths = backbone_paths(model.config)
  backbone_abstract, _ = split_backbone(abstract, paths)
  backbone_shardings, new_shardings = split_backbone(shardings, paths)
  backbone_target = jax.tree_util.tree_map(
      lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
      backbone_abstract, backbone_shardings)
  if initial_checkpoint_path:
    backbone = load_backbone_params(initial_checkpoint_path, backbone_target, frozen_dtype)
  else:
    logging.warning("INITIAL_CHECKPOINT_PATH is None: the backbone is randomly initialized "
                    "(fine for smoke tests, meaningless for real tuning)")
    with partitioner.context():
      backbone = random_backbone(model, backbone_target, jax.random.fold_in(rng, 1), frozen_dtype)
  new = _initialize_new(model, partitioner, backbone, new_shardings, rng)
  # New parameters can sit inside backbone modules (`.../query/lora/a`): merge by path.
  flat = traverse_util.flatten_dict(flax.core.unfreeze(backbone), sep="/")
  flat.update(traverse_util.flatten_dict(flax.core.unfreeze(new.get(BACKBONE_COLLECTION, {})),
                                         sep="/"))
  new[BACKBONE_COLLECTION] = traverse_util.unflatten_dict(flat, sep="/")
  host_memory.release_free_memory()  # the init's or the checkpoint reader's transients
  return new, shardings


# The smallest group of `random_backbone`: below this, a group's transient memory is small
# next to the process's (~500 MB of libraries), and each group costs a compile.
MIN_GROUP_BYTES = 64 << 20


def random_backbone(model: T5, target: Variables, rng: jax.Array, dtype: Optional[str] = None,
                    pieces: int = 8, min_group_bytes: int = MIN_GROUP_BYTES) -> Variables:
  """The backbone as `model.init(rng)` makes it, built a group of parameters at a time.

  One jitted `model.init` per group of parameters (about 1/`pieces` of the
  bytes each), returning only that group: XLA drops the rest of the init, so
  each value is the one the whole `model.init` gives (same keys, same
  arithmetic), while the transient memory (random bits, the float32 value
  before the cast to `dtype`, the compiled program) is one group's. Built
  whole, a T5 1.1-small's init peaked at about 3x the parameters' bytes.

  Args:
    model: the run's model.
    target: the backbone tree of `jax.ShapeDtypeStruct`s with shardings.
    rng: the init key.
    dtype: cast to this dtype (the frozen dtype) inside each group's program.
    pieces: the number of groups a large backbone is built in.
    min_group_bytes: a group's least byte budget: a backbone below it is one program.
  """
  enc, dec = _dummy_inputs()
  flat_target = traverse_util.flatten_dict(flax.core.unfreeze(target), sep="/")
  nbytes = {path: int(np.prod(t.shape)) * jnp.dtype(t.dtype).itemsize
            for path, t in flat_target.items()}
  budget = max(sum(nbytes.values()) / pieces, max(nbytes.values()), min_group_bytes)
  groups, size = [[]], 0
  for path in sorted(nbytes):
    if size + nbytes[path] > budget and groups[-1]:
      groups.append([])
      size = 0
    groups[-1].append(path)
    size += nbytes[path]
  built = {}
  for group in groups:
    def init_group(r, group=tuple(group)):
      params = traverse_util.flatten_dict(
          flax.core.unfreeze(nn.meta.unbox(model.init(r, enc, dec))[BACKBONE_COLLECTION]),
          sep="/")
      return {path: params[path].astype(dtype or params[path].dtype) for path in group}
    built.update(jax.jit(init_group, out_shardings={p: flat_target[p].sharding for p in group})(rng))
  return traverse_util.unflatten_dict(built, sep="/")


def _initialize_new(model: T5, partitioner: Partitioner, backbone: Variables,
                    new_shardings: Variables, rng: jax.Array) -> Variables:
  """Every non-backbone variable, created by the model's own initializers.

  The model runs once with the loaded backbone in place and every collection
  mutable, so Flax creates exactly the variables that are missing, and
  vocabulary- or label-based prompt initializers see the real embeddings.
  """
  if not new_shardings:
    return {}
  enc, dec = _dummy_inputs()
  paths = backbone_paths(model.config)

  def create(backbone, rng):
    _, created = model.apply({BACKBONE_COLLECTION: backbone}, enc, dec, mutable=list(new_shardings),
                             rngs={"params": rng})
    return split_backbone(nn.meta.unbox(flax.core.unfreeze(created)), paths)[1]

  with partitioner.context():
    return jax.jit(create, out_shardings=new_shardings)(backbone, rng)
