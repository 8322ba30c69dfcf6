"""`prompt-tuning plan --gin_file=... [--num_devices N]`: per-device memory of a run, on paper.

The model's variables come from `jax.eval_shape` (nothing is allocated), their
mesh PartitionSpecs from the run's real logical-axis rules
(`Partitioner.rules`), and the mesh from `make_mesh.model_parallel_size` /
`make_mesh.mesh_shape` over `--num_devices` devices (default: the devices
present), so T5 1.1 XXL on a 64-chip mesh can be planned on a laptop.
"""
import json
from typing import Any, Dict, Optional

import flax.linen as nn
import gin
import jax
import numpy as np
from jax.sharding import PartitionSpec

from prompt_tuning import checks, configurables, gin_utils
from prompt_tuning import plan as plan_lib
from prompt_tuning.errors import UserError
from prompt_tuning.models.config import remat_policy


def add_arguments(parser) -> None:
  gin_utils.add_gin_arguments(parser)
  parser.add_argument("--num_devices", type=checks.int_flag(1), default=None,
                      help="devices of the mesh to plan for (default: jax.device_count())")
  parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
  parser.add_argument("--device_memory_gib", type=checks.float_flag(above=0), default=None,
                      help="memory of one device in GiB (e.g. 16 for a TPU v3 core): exit with an "
                      "error when the run does not fit (scripts/tpu/train_rte.sh checks this)")


def _gin_value(name: str, default: Any = None) -> Any:
  """A bound gin parameter (macros resolved), or `default` when unbound."""
  try:
    value = gin.query_parameter(name)
  except ValueError:
    return default
  while isinstance(value, gin.config.ConfigurableReference):
    if str(value).startswith("%"):  # a macro
      value = gin.query_parameter(str(value))
    else:  # @fn() is called, @fn is the function itself
      fn = value.scoped_configurable_fn
      value = fn() if value.evaluate else fn
  return value


def _leaves(tree: Any, specs: Any):
  shapes = jax.tree_util.tree_leaves(tree)
  spec_leaves = jax.tree_util.tree_leaves(specs, is_leaf=lambda x: x is None or
                                          isinstance(x, jax.sharding.PartitionSpec))
  return [(x.shape, x.dtype, s) for x, s in zip(shapes, spec_leaves)]


def plan_run(num_devices: Optional[int] = None) -> Dict[str, Any]:
  """The plan of the parsed gin configuration (see module docstring)."""
  from prompt_tuning.train import data as data_lib, initialize, run_setup
  from prompt_tuning.train import trainable as trainable_lib
  from prompt_tuning.train.partitioning import DEFAULT_RULES, check_batch_split
  from prompt_tuning.train.run_setup import optimizer_layouts
  num_devices = num_devices or jax.device_count()
  try:
    axis_sizes = plan_lib.mesh_axis_sizes(num_devices, _gin_value("make_mesh.model_parallel_size", 1),
                                          _gin_value("make_mesh.mesh_shape"))
  except ValueError as e:
    raise UserError(f"{e}; fix --num_devices or make_mesh.model_parallel_size/mesh_shape") from None
  rules = tuple(tuple(r) for r in _gin_value("Partitioner.rules", DEFAULT_RULES))
  model = gin_utils.call(initialize.build_model)
  config = model.config
  # The run's own checks, before shapes are traced with bad values.
  prompt_length = run_setup.prompt_length(model)
  lengths = _gin_value("train.task_feature_lengths", {"inputs": 512, "targets": 8})
  data_lib.validate_feature_lengths(lengths)
  batch = checks.positive_int(_gin_value("train.batch_size", 32), "BATCH_SIZE (train.batch_size)",
                              "--gin.BATCH_SIZE=32")
  microbatches = checks.positive_int(_gin_value("train.num_microbatches", 1),
                                     "train.num_microbatches", "--gin.train.num_microbatches=1")
  check_batch_split(batch, axis_sizes["data"], microbatches)  # the trainer's rule, on this mesh
  from prompt_tuning.train import packed_runs
  pack = _gin_value("train.pack", False)
  packed_runs.check_pack(pack, _gin_value("train.pack_targets_length"), None)
  pack = packed_runs.resolve_for_model(pack, model)
  decoder_length = int(lengths["targets"])
  if pack:  # BATCH_SIZE counts packed rows of P + L encoder positions (data/packing.py)
    decoder_length = packed_runs.layout(model, lengths,
                                        _gin_value("train.pack_targets_length")).targets_length
  def init():
    tokens = jax.numpy.ones((1, 4), np.int32)
    return model.init(jax.random.PRNGKey(0), tokens, tokens)
  boxed = jax.eval_shape(init)
  variables = nn.meta.unbox(boxed)
  logical = nn.get_partition_spec(boxed)
  specs = jax.tree_util.tree_map(lambda s: nn.logical_to_mesh_axes(tuple(s), rules), logical,
                                 is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec))
  patterns = trainable_lib.trainable_patterns()
  trainable, frozen = trainable_lib.split_variables(variables, patterns)
  trainable_specs, frozen_specs = trainable_lib.split_variables(specs, patterns)
  frozen_dtype = _gin_value("train.frozen_dtype")
  if frozen_dtype:
    frozen = jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(x.shape, np.dtype(frozen_dtype)),
                                    frozen)

  optimizer = _gin_value("train.optimizer")
  opt_fp = plan_lib.Footprint()
  groups = []
  if optimizer is not None:
    # The trainer's own rule (run_setup.optimizer_layouts), on PartitionSpecs.
    opt_state = jax.eval_shape(optimizer.init, trainable)
    opt_specs = optimizer_layouts(optimizer, trainable, trainable_specs, PartitionSpec())
    opt_fp = plan_lib.footprint(_leaves(opt_state, opt_specs), axis_sizes)
    groups = optimizer_groups(optimizer, trainable, opt_state, opt_specs, axis_sizes)
  frozen_fp = plan_lib.footprint(_leaves(frozen, frozen_specs), axis_sizes)
  trainable_fp = plan_lib.footprint(_leaves(trainable, trainable_specs), axis_sizes)

  shape = plan_lib.ActivationShape(
      emb_dim=config.emb_dim, num_heads=config.num_heads, head_dim=config.head_dim,
      mlp_dim=config.mlp_dim, vocab_size=config.vocab_size,
      num_encoder_layers=config.num_encoder_layers, num_decoder_layers=config.num_decoder_layers,
      batch=max(1, batch // microbatches), encoder_length=int(lengths["inputs"]) + prompt_length,
      decoder_length=decoder_length, dtype_bytes=np.dtype(config.dtype).itemsize,
      remat=remat_policy(config))
  activations = plan_lib.activation_bytes(shape, axis_sizes["data"], axis_sizes["model"])
  per_device = frozen_fp.device_bytes + trainable_fp.device_bytes + opt_fp.device_bytes + activations
  return {
      "num_devices": num_devices, "mesh": axis_sizes,
      "model": {"emb_dim": config.emb_dim, "layers": [config.num_encoder_layers,
                                                      config.num_decoder_layers],
                "vocab_size": config.vocab_size, "param_dtype": config.param_dtype,
                "frozen_dtype": frozen_dtype or config.param_dtype, "prompt_length": prompt_length},
      "trainable_patterns": list(patterns),
      "frozen": dataclass_dict(frozen_fp), "trainable": dataclass_dict(trainable_fp),
      "optimizer_state": dataclass_dict(opt_fp), "optimizer_groups": groups,
      "activations": {"device_bytes": activations, "batch": batch, "packed": bool(pack),
                      "num_microbatches": microbatches,
                      "encoder_length": shape.encoder_length, "decoder_length": shape.decoder_length,
                      "remat": remat_policy(config)},
      "device_bytes": per_device,
  }


def optimizer_groups(optimizer, trainable: Any, opt_state: Any, opt_specs: Any,
                     axis_sizes: Dict[str, int]) -> list:
  """Each parameter group of a `partitioned` optimizer (T5X's MultiOptimizer): its
  pattern, its parameters and its own optimizer state per device. Empty for one optimizer."""
  from prompt_tuning.train import optim
  if not isinstance(optimizer, optim.Partitioned):
    return []
  sizes = {optim.key_path_name(kp): int(np.prod(x.shape))
           for kp, x in jax.tree_util.tree_flatten_with_path(trainable)[0]}
  rows = []
  for label, paths in optim.parameter_groups(optimizer, trainable).items():
    # multi_transform keeps one inner state per group label, masked to that group.
    state = opt_state.inner_states[label]
    specs = opt_specs.inner_states[label]
    fp = plan_lib.footprint(_leaves(state, specs), axis_sizes)
    rows.append({"group": label, "pattern": optimizer.patterns.get(label, "(the rest)"),
                 "parameters": sum(sizes[p] for p in paths), "tensors": len(paths),
                 "state_device_bytes": fp.device_bytes})
  return rows


def dataclass_dict(fp: plan_lib.Footprint) -> Dict[str, int]:
  return {"count": fp.count, "total_bytes": fp.total_bytes, "device_bytes": fp.device_bytes}


def format_plan(p: Dict[str, Any]) -> str:
  h, c = plan_lib.human_bytes, plan_lib.human_count
  m, a = p["model"], p["activations"]
  lines = [
      f"model: T5 1.1 d_model {m['emb_dim']}, {m['layers'][0]}+{m['layers'][1]} layers, vocab "
      f"{m['vocab_size']}, prompt {m['prompt_length']} tokens; frozen weights {m['frozen_dtype']}",
      f"mesh: data {p['mesh']['data']} x model {p['mesh']['model']} = {p['num_devices']} devices",
      f"{'':<28}{'count':>10}{'total':>13}{'per device':>13}",
  ]
  for name, key in (("frozen parameters", "frozen"), ("trainable parameters", "trainable"),
                    ("optimizer state", "optimizer_state")):
    fp = p[key]
    lines.append(f"{name:<28}{c(fp['count']):>10}{h(fp['total_bytes']):>13}{h(fp['device_bytes']):>13}")
  for g in p.get("optimizer_groups", []):
    lines.append(f"  optimizer group {g['pattern']:<12}{c(g['parameters']):>10}{'':>13}"
                 f"{h(g['state_device_bytes']):>13}   {g['tensors']} tensors")
  lines.append(f"{'activations (estimate)':<28}{'':>10}{'':>13}{h(a['device_bytes']):>13}"
               f"   batch {a['batch']}{' packed rows' if a.get('packed') else ''}/"
               f"{a['num_microbatches']} microbatch(es), encoder "
               f"{a['encoder_length']}, decoder {a['decoder_length']}, remat {a['remat']}")
  lines.append(f"{'total per device':<28}{'':>10}{'':>13}{h(p['device_bytes']):>13}")
  return "\n".join(lines)


def run(args) -> int:
  configurables.setup_from_args(args)
  result = plan_run(args.num_devices)
  print(json.dumps(result) if args.json else format_plan(result), flush=True)
  if args.device_memory_gib is not None:
    limit = args.device_memory_gib * 2 ** 30
    if result["device_bytes"] > limit:
      raise UserError(
          f"the run needs {plan_lib.human_bytes(result['device_bytes'])} per device, more than "
          f"the {args.device_memory_gib:g} GiB of one device; raise make_mesh.model_parallel_size "
          f"(now {result['mesh']['model']}) or train.num_microbatches, or set "
          "T5Config.remat='full' (or 'dots') or train.frozen_dtype='bfloat16'")
  return 0
