"""Device mesh and logical-axis partitioning (the replacement for T5X's PjitPartitioner).

Parameters and activations carry logical axis names (`embed`, `mlp`, ...);
`rules` map them to the mesh axes `data` and `model`. Rules are data, so gin
can rebind them. Everything is placed with `NamedSharding` and compiled with
`jax.jit`; activation constraints take effect because the mesh is installed
with `jax.set_mesh` (under a plain `with mesh:` Flax constraints do nothing).
"""
import contextlib
from typing import Any, Optional, Sequence, Tuple

import flax.linen as nn
import gin
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from prompt_tuning import multihost
from prompt_tuning.errors import UserError

LogicalRules = Tuple[Tuple[str, Optional[str]], ...]

# T5X's standard 1-D model-parallel rules plus the prompt axes (replicated).
DEFAULT_RULES: LogicalRules = (
    ("batch", "data"),
    ("vocab", "model"),
    ("embed", None),
    ("mlp", "model"),
    ("heads", "model"),
    ("kv", None),
    ("joined_kv", "model"),
    ("relpos_buckets", None),
    ("length", None),
    ("prompt", None),
    ("prompt_embed", None),
    ("prompt_mlp", None),
)


@gin.configurable
def make_mesh(model_parallel_size: int = 1, mesh_shape: Optional[Sequence[int]] = None,
              devices: Optional[Sequence[Any]] = None) -> Mesh:
  """A `(data, model)` mesh over all (or the given) devices.

  Args:
    model_parallel_size: size of the `model` axis; `data` takes the rest.
    mesh_shape: explicit `(data, model)`; overrides `model_parallel_size`.
    devices: defaults to `jax.devices()` (all hosts).
  """
  devices = list(devices if devices is not None else jax.devices())
  n = len(devices)
  if mesh_shape is None:
    if model_parallel_size < 1 or n % model_parallel_size:
      raise UserError(f"model_parallel_size={model_parallel_size} does not divide the {n} devices; "
                      "bind make_mesh.model_parallel_size to a divisor")
    mesh_shape = (n // model_parallel_size, model_parallel_size)
  mesh_shape = tuple(int(s) for s in mesh_shape)
  if len(mesh_shape) != 2 or int(np.prod(mesh_shape)) != n:
    raise UserError(f"mesh_shape={mesh_shape} does not cover the {n} devices as (data, model)")
  try:
    from jax.experimental import mesh_utils
    grid = mesh_utils.create_device_mesh(mesh_shape, devices)
  except Exception:  # fake CPU devices have no physical topology
    grid = np.asarray(devices).reshape(mesh_shape)
  return Mesh(grid, ("data", "model"))


@gin.configurable
def first_devices(count: int = 1):
  """The first `count` devices (e.g. a 1-device baseline on a multi-device host)."""
  return jax.devices()[:count]


@gin.configurable
class Partitioner:
  """Maps logical axes to shardings on one mesh."""

  def __init__(self, mesh: Optional[Mesh] = None, rules: LogicalRules = DEFAULT_RULES):
    self.mesh = mesh if mesh is not None else make_mesh()
    multihost.open_collectives(self.mesh)
    self.rules = tuple(tuple(r) for r in rules)

  @property
  def data_sharding(self) -> NamedSharding:
    """Batches: leading axis over `data`."""
    return NamedSharding(self.mesh, PartitionSpec("data"))

  @property
  def replicated(self) -> NamedSharding:
    return NamedSharding(self.mesh, PartitionSpec())

  @property
  def data_parallel_size(self) -> int:
    return self.mesh.shape["data"]

  def shardings_of(self, boxed_tree: Any) -> Any:
    """`NamedSharding`s for a tree whose leaves may be `nn.LogicallyPartitioned` boxes.

    Unboxed leaves (e.g. optimizer counters) are replicated, and so is any
    dimension the mesh axis does not divide (2 heads on a 4-way `model` axis):
    correct, just not sharded there.
    """
    specs = nn.get_partition_spec(boxed_tree)
    shardings = nn.logical_to_mesh_sharding(specs, self.mesh, self.rules)
    shapes = nn.meta.unbox(boxed_tree)
    return jax.tree_util.tree_map(self._divisible, shardings, shapes)

  def _divisible(self, sharding: NamedSharding, leaf: Any) -> NamedSharding:
    spec = list(sharding.spec) + [None] * (len(leaf.shape) - len(sharding.spec))
    for i, axes in enumerate(spec):
      names = axes if isinstance(axes, tuple) else (axes,) if axes else ()
      size = int(np.prod([self.mesh.shape[a] for a in names])) if names else 1
      if leaf.shape[i] % size:
        spec[i] = None
    return NamedSharding(self.mesh, PartitionSpec(*spec))

  @contextlib.contextmanager
  def context(self):
    """Mesh + rules for tracing, so `with_logical_constraint` takes effect."""
    with jax.set_mesh(self.mesh), nn.logical_axis_rules(self.rules):
      yield

  def shard_batch(self, local_batch: dict) -> dict:
    """Host-local numpy batch -> global `jax.Array`s sharded over `data`."""
    return {k: jax.make_array_from_process_local_data(self.data_sharding, v)
            for k, v in local_batch.items()}


def check_batch_split(batch_size: int, data_shards: int, num_microbatches: int = 1,
                      hosts: int = 1) -> int:
  """The per-host batch, when the global batch splits evenly over the data shards (each
  microbatch too) and the hosts; `plan` checks a mesh it only imagines with the same rule."""
  if batch_size % data_shards:
    raise UserError(f"BATCH_SIZE={batch_size} is not divisible by the {data_shards:,} "
                    "data-parallel shards of the mesh; choose a multiple, or fewer data shards "
                    "(make_mesh.model_parallel_size, fewer devices)")
  if batch_size % (num_microbatches * data_shards):
    raise UserError(f"BATCH_SIZE={batch_size} does not split into {num_microbatches} microbatches "
                    f"over {data_shards:,} data shards")
  if batch_size % hosts:
    raise UserError(f"BATCH_SIZE={batch_size} is not divisible by {hosts} hosts")
  return batch_size // hosts


def check_batch_size(batch_size: int, partitioner: Partitioner, num_microbatches: int = 1) -> int:
  """The per-host batch of `partitioner`'s mesh (`check_batch_split`)."""
  return check_batch_split(batch_size, partitioner.data_parallel_size, num_microbatches,
                           jax.process_count())


