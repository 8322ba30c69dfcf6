"""`prompt-tuning plan --gin_file=... [--num_devices N] [--compile]`: per-device memory of a run.

The model's variables come from `jax.eval_shape` (nothing is allocated), their
mesh PartitionSpecs from the run's real logical-axis rules
(`Partitioner.rules`), and the mesh from `make_mesh.model_parallel_size` /
`make_mesh.mesh_shape` over `--num_devices` devices (default: the devices
present), so T5 1.1 XXL on a 64-chip mesh can be planned on a laptop.

`--compile` also compiles the run's real train step with abstract weights
(`train.step_memory`) and prints XLA's memory per device beside the estimate:
on the devices present when there are `--num_devices` of them, else on as many
fake CPU devices, in a child process (`--xla_force_host_platform_device_count`).
On CPU a bfloat16 run's step is compiled with float32 activations, and says so:
XLA:CPU computes bf16 in float32 and keeps both, 1.5-3x over an accelerator
(docs/performance.md), so its bf16 number would refuse runs that fit; the
float32 step bounds the bf16 one from above.
"""
import json
import os
import subprocess
import sys
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
                      "error when the run does not fit (scripts/tpu/train_rte.sh checks this); "
                      "needed by NUM_MICROBATCHES='auto'")
  parser.add_argument("--compile", action="store_true",
                      help="also compile the run's train step (abstract weights, nothing "
                      "allocated) and print XLA's memory per device; without --num_devices "
                      "devices present, on that many fake CPU devices in a child process")


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


def plan_run(num_devices: Optional[int] = None,
             num_microbatches: Optional[int] = None) -> Dict[str, Any]:
  """The plan of the parsed gin configuration (see module docstring); `num_microbatches`
  replaces `train.num_microbatches` (how 'auto' is resolved)."""
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
  microbatches = checks.positive_int(
      num_microbatches or _gin_value("train.num_microbatches", 1),
      "NUM_MICROBATCHES (train.num_microbatches)", "--gin.NUM_MICROBATCHES=1 (or 'auto')")
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
      decoder_length=decoder_length, dtype=np.dtype(config.dtype).name,
      remat=remat_policy(config), dropout_rate=config.dropout_rate)
  activations = plan_lib.activation_bytes(shape, axis_sizes["data"], axis_sizes["model"])
  per_device = frozen_fp.device_bytes + trainable_fp.device_bytes + opt_fp.device_bytes + activations
  return {
      "num_devices": num_devices, "mesh": axis_sizes,
      "model": {"emb_dim": config.emb_dim, "layers": [config.num_encoder_layers,
                                                      config.num_decoder_layers],
                "vocab_size": config.vocab_size, "param_dtype": config.param_dtype,
                "frozen_dtype": frozen_dtype or config.param_dtype, "activation_dtype": config.dtype,
                "prompt_length": prompt_length},
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
      f"{m['vocab_size']}, prompt {m['prompt_length']} tokens; frozen weights {m['frozen_dtype']}, activations {m['activation_dtype']}",
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
  if "compiled" in p:
    x = p["compiled"]
    lines.append(f"{'XLA compiled, per device':<28}{'':>10}{'':>13}{h(x['device_bytes']):>13}"
                 f"   arguments {h(x['argument_bytes'])}, temporaries {h(x['temp_bytes'])}, "
                 f"outputs not in place {h(x['output_bytes'] - x['alias_bytes'])}; "
                 f"estimate/XLA {p['device_bytes'] / max(x['device_bytes'], 1):.2f}")
    if x.get("activation_dtype", m["activation_dtype"]) != m["activation_dtype"]:
      lines.append(f"  compiled with {x['activation_dtype']} activations, an upper bound of the "
                   f"run's {m['activation_dtype']}: XLA:CPU keeps bf16 math in float32 and both "
                   "copies, which no accelerator does (docs/performance.md)")
  return "\n".join(lines)


def _fake_device_argv(args, num_devices: int) -> list:
  """This command's arguments, for the child process that compiles on fake devices."""
  argv = ["plan", *[f"--gin_file={f}" for f in args.gin_file],
          *[f"--gin.{b}" for b in args.gin_bindings], f"--num_devices={num_devices}",
          "--compile", "--json"]
  if args.gin_search_paths:
    argv.append(f"--gin_search_paths={args.gin_search_paths}")
  if args.device_memory_gib is not None:
    argv.append(f"--device_memory_gib={args.device_memory_gib!r}")
  return argv


def on_fake_devices(args, num_devices: int) -> Dict[str, Any]:
  """The `--compile --json` result of this command on `num_devices` fake CPU devices."""
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=" ".join(
      [os.environ.get("XLA_FLAGS", ""), f"--xla_force_host_platform_device_count={num_devices}"]
  ).strip())
  proc = subprocess.run([sys.executable, "-m", "prompt_tuning", *_fake_device_argv(args, num_devices)],
                        env=env, capture_output=True, text=True, check=False)
  lines = proc.stdout.strip().splitlines()
  if proc.returncode == 0 and lines:
    for line in lines[:-1]:  # what the child printed before its result ('auto' choices)
      print(line, flush=True)
    return json.loads(lines[-1])
  errors = [l for l in proc.stderr.splitlines() if l.startswith("error: ")]
  if errors:
    raise UserError(errors[-1][len("error: "):])
  tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
  raise UserError(f"compiling on {num_devices} fake CPU devices failed (exit {proc.returncode}: "
                  f"{tail}); rerun with fewer --num_devices, or on the devices themselves")


def compiled_activation_dtype(activation_dtype: str) -> str:
  """The activation dtype `--compile` compiles a run of `activation_dtype` with here:
  float32 for bfloat16 on CPU (module docstring), else the run's own."""
  if jax.default_backend() == "cpu" and np.dtype(activation_dtype) == np.dtype(jax.numpy.bfloat16):
    return "float32"
  return np.dtype(activation_dtype).name


def compiled_step_memory(num_microbatches: int):
  """XLA's memory of the parsed run's train step on the devices present (`step_memory`),
  with `compiled_activation_dtype`'s activations."""
  from prompt_tuning.train import initialize, step_memory
  from prompt_tuning.train import trainable as trainable_lib
  from prompt_tuning.train.partitioning import Partitioner
  model = gin_utils.call(initialize.build_model)
  dtype = compiled_activation_dtype(model.config.dtype)
  if dtype != np.dtype(model.config.dtype).name:
    model = model.clone(config=model.config.replace(dtype=dtype))
  return step_memory.step_memory(
      model, Partitioner(), trainable_lib.trainable_patterns(), _gin_value("train.optimizer"),
      _gin_value("train.frozen_dtype"), _gin_value("train.batch_size", 32),
      _gin_value("train.task_feature_lengths", {"inputs": 512, "targets": 8}), num_microbatches)


# XLA's memory per microbatch count measured while resolving 'auto' (this process's gin
# configuration), so the chosen count is not compiled twice.
_compiled_for_auto: Dict[int, Any] = {}


def resolve_microbatches(num_devices: int, limit: Optional[int], compile_: bool) -> Optional[int]:
  """`train.num_microbatches`, or for 'auto' the smallest count that fits `limit` bytes:
  by XLA's memory with `compile_`, else by the estimate. Prints the choice."""
  from prompt_tuning.train import step_memory
  _compiled_for_auto.clear()  # measured under an earlier configuration of this process
  setting = _gin_value("train.num_microbatches", 1)
  if setting != step_memory.AUTO:
    return None
  if limit is None:
    raise UserError("NUM_MICROBATCHES='auto' picks the smallest count that fits one device: "
                    "give --device_memory_gib (e.g. 16 for a TPU v3 core)")
  axis_sizes = plan_lib.mesh_axis_sizes(num_devices, _gin_value("make_mesh.model_parallel_size", 1),
                                        _gin_value("make_mesh.mesh_shape"))
  candidates = step_memory.microbatch_candidates(_gin_value("train.batch_size", 32),
                                                 axis_sizes["data"])
  if compile_:
    measure = lambda m: _compiled_for_auto.setdefault(m, compiled_step_memory(m)).device_bytes
  else:
    measure = lambda m: plan_run(num_devices, m)["device_bytes"]
  count, used = step_memory.fitting_microbatches(measure, candidates, limit, "the train step",
                                                 auto=True)
  print(f"NUM_MICROBATCHES='auto': {count} ({plan_lib.human_bytes(used)} per device by "
        f"{'XLA' if compile_ else 'the estimate'}, of {plan_lib.human_bytes(limit)})", flush=True)
  return count


def run(args) -> int:
  limit = None if args.device_memory_gib is None else int(args.device_memory_gib * 2 ** 30)
  num_devices = args.num_devices or jax.device_count()
  if args.compile and num_devices != jax.device_count():
    result = on_fake_devices(args, num_devices)
  else:
    configurables.setup_from_args(args)
    microbatches = resolve_microbatches(num_devices, limit, args.compile)
    result = plan_run(num_devices, microbatches)
    if args.compile:
      count = result["activations"]["num_microbatches"]
      memory = _compiled_for_auto.get(count) if microbatches else None
      result["compiled"] = (memory or compiled_step_memory(count)).as_dict()
      result["compiled"]["activation_dtype"] = compiled_activation_dtype(
          result["model"]["activation_dtype"])
  print(json.dumps(result) if args.json else format_plan(result), flush=True)
  if limit is not None:
    compiled = result.get("compiled")
    needed = compiled["device_bytes"] if compiled else result["device_bytes"]
    if needed > limit:
      raise UserError(
          f"the run needs {plan_lib.human_bytes(needed)} per device"
          f"{' by XLA' if compiled else ''}, more than the {args.device_memory_gib:g} GiB of one "
          f"device; raise make_mesh.model_parallel_size (now {result['mesh']['model']}) or "
          "NUM_MICROBATCHES (train.num_microbatches; 'auto' picks one), or set "
          "T5Config.remat='full' (or 'dots'), ACTIVATION_DTYPE='bfloat16' or "
          "train.frozen_dtype='bfloat16'")
  return 0
