"""Building the model and its variables on a mesh: backbone loaded once, the rest created on top.

The backbone is the parameter paths of a plain `T5(config)`; everything else
the model defines (prompt, delta insertions, XPrompt masks) is new. Order
matters: the backbone is restored straight into its shardings, then the new
variables are created by running the model with the real backbone, so
vocabulary- and label-based prompt initializers see pretrained embeddings.
"""
import logging
import os
from typing import Any, Callable, Dict, Optional, Tuple, Union

import flax
import flax.linen as nn
import gin
import jax
import jax.numpy as jnp
import numpy as np

from prompt_tuning.errors import UserError
from prompt_tuning.models.config import T5Config
from prompt_tuning.models.deltas import NO_DELTAS, DeltaPlan
from prompt_tuning.models.t5 import T5
from prompt_tuning.train.partitioning import Partitioner

Variables = Dict[str, Any]
BACKBONE_COLLECTION = "params"


@gin.configurable
def build_model(model_config: T5Config = gin.REQUIRED, prompt: Optional[nn.Module] = None,
                deltas: Union[DeltaPlan, Callable[[T5Config], DeltaPlan], None] = None) -> T5:
  """The T5 model of a run (gin: `build_model.model_config`, `.prompt`, `.deltas`).

  `deltas` is a `DeltaPlan` or a function of the model config returning one
  (e.g. `@apet_deltas`, whose positions depend on the model's shapes).
  """
  if deltas is not None and not isinstance(deltas, DeltaPlan):
    deltas = deltas(model_config)
  return T5(model_config, prompt=prompt, deltas=deltas or NO_DELTAS)


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


def backbone_paths(model: T5) -> frozenset:
  """The '/'-joined parameter paths of a plain `T5(model.config)`: what a checkpoint holds."""
  enc, dec = _dummy_inputs()
  plain = jax.eval_shape(lambda: T5(model.config).init(jax.random.PRNGKey(0), enc, dec))
  return frozenset(flax.traverse_util.flatten_dict(plain[BACKBONE_COLLECTION], sep="/"))


def _split_params(params: Variables, paths: frozenset) -> Tuple[Variables, Variables]:
  """(backbone part, new part) of a `params` tree, by `paths`."""
  flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(params), sep="/")
  part = lambda keep: flax.traverse_util.unflatten_dict(  # noqa: E731
      {k: v for k, v in flat.items() if (k in paths) == keep}, sep="/")
  return part(True), part(False)


def identify_checkpoint(path: str) -> str:
  """'backbone' (ours), 't5x' or 'hf' — by the files in the folder."""
  if "://" not in path and not os.path.exists(path):
    raise UserError(f"INITIAL_CHECKPOINT_PATH {path} does not exist; pass a folder written by "
                    "`prompt-tuning convert`, a T5X checkpoint_N folder or a Hugging Face folder")
  exists = (lambda p: __import__("tensorflow").io.gfile.exists(p)) if "://" in path else os.path.exists
  if exists(os.path.join(path, "params")) and exists(os.path.join(path, "config.json")):
    return "backbone"
  if exists(os.path.join(path, "checkpoint")):
    return "t5x"
  if exists(os.path.join(path, "config.json")):
    return "hf"
  raise UserError(f"{path} is not a backbone folder (config.json + params/), a T5X checkpoint "
                  "(checkpoint file) or a Hugging Face folder; check INITIAL_CHECKPOINT_PATH")


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
  """All variables of `model`, sharded: backbone from the checkpoint, the rest freshly initialized.

  Returns:
    (variables, shardings), both `{'params': ..., other collections}`.
  """
  abstract, shardings = variable_shardings(model, partitioner)
  paths = backbone_paths(model)
  backbone_part = lambda tree: _split_params(tree[BACKBONE_COLLECTION], paths)[0]  # noqa: E731
  backbone_target = jax.tree_util.tree_map(
      lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
      backbone_part(abstract), backbone_part(shardings))
  if initial_checkpoint_path:
    backbone = load_backbone_params(initial_checkpoint_path, backbone_target, frozen_dtype)
  else:
    logging.warning("INITIAL_CHECKPOINT_PATH is None: the backbone is randomly initialized "
                    "(fine for smoke tests, meaningless for real tuning)")
    enc, dec = _dummy_inputs()
    init_fn = jax.jit(lambda r: backbone_part(nn.meta.unbox(model.init(r, enc, dec))),
                      out_shardings=backbone_part(shardings))
    with partitioner.context():
      backbone = init_fn(jax.random.fold_in(rng, 1))
    if frozen_dtype:
      backbone = jax.tree_util.tree_map(lambda x: x.astype(frozen_dtype), backbone)
  rest = _initialize_missing(model, partitioner, backbone, shardings, rng, paths)
  params = flax.traverse_util.flatten_dict(backbone, sep="/")
  params.update(flax.traverse_util.flatten_dict(rest.get(BACKBONE_COLLECTION, {}), sep="/"))
  rest[BACKBONE_COLLECTION] = flax.traverse_util.unflatten_dict(params, sep="/")
  return rest, shardings


def _missing_shardings(shardings: Variables, paths: frozenset) -> Variables:
  out = {}
  for collection, tree in shardings.items():
    if collection == BACKBONE_COLLECTION:
      tree = _split_params(tree, paths)[1]
    if tree:
      out[collection] = tree
  return out


def _initialize_missing(model, partitioner, backbone, shardings, rng, paths) -> Variables:
  """Creates every variable that is not backbone (prompt, deltas, masks) on the real backbone."""
  out_shardings = _missing_shardings(shardings, paths)
  if not out_shardings:
    return {}
  enc, dec = _dummy_inputs()
  collections = list(out_shardings)
  new_paths = flax.traverse_util.flatten_dict(out_shardings.get(BACKBONE_COLLECTION, {}), sep="/")
  # A prompt (and its masks) is created by the embedding path alone; deltas need the whole model.
  inputs, method = (((enc,), T5.embed_encoder_inputs)
                    if all(k.startswith("prompt/") for k in new_paths) else ((enc, dec), None))

  def create(backbone, rng):
    _, new = model.apply({BACKBONE_COLLECTION: backbone}, *inputs, method=method,
                         mutable=collections, rngs={"params": rng})
    new = nn.meta.unbox(flax.core.unfreeze(new))
    if BACKBONE_COLLECTION in new:
      new[BACKBONE_COLLECTION] = _split_params(new[BACKBONE_COLLECTION], paths)[1]
    return new

  with partitioner.context():
    return jax.jit(create, out_shardings=out_shardings)(backbone, rng)
