"""`prompt-tuning plan`: per-device bytes from shapes, PartitionSpecs and mesh sizes only."""
import json

import flax
import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from prompt_tuning import configurables
from prompt_tuning import plan as plan_lib

MODEL_SHARDED = ("vocab", "mlp", "heads", "joined_kv")  # DEFAULT_RULES send these to `model`
SMALL_MODEL = (
    "build_model.model_config = @T5Config()",
    "T5Config.vocab_size = 64", "T5Config.emb_dim = 16", "T5Config.num_heads = 8",
    "T5Config.head_dim = 2", "T5Config.mlp_dim = 32", "T5Config.num_encoder_layers = 1",
    "T5Config.num_decoder_layers = 1", "T5Config.relative_attention_num_buckets = 8",
    "MODEL_DIR = '/unused'", "MIXTURE_OR_TASK_NAME = 'unused'", "INITIAL_CHECKPOINT_PATH = None",
    "PROMPT_LENGTH = 5", "BATCH_SIZE = 8", "TASK_FEATURE_LENGTHS = {'inputs': 12, 'targets': 4}",
)
FILES = ("runs/prompt_finetune.gin", "prompts/prompt.gin")


def test_local_shape_divides_sharded_dims_and_keeps_replicated_ones():
  sizes = {"data": 2, "model": 4}
  assert plan_lib.local_shape((64, 16), P("model", None), sizes) == (16, 16)
  assert plan_lib.local_shape((64, 16), P(None, None), sizes) == (64, 16)
  assert plan_lib.local_shape((64, 16), None, sizes) == (64, 16)
  assert plan_lib.local_shape((8, 64), P("data", "model"), sizes) == (4, 16)
  assert plan_lib.local_shape((8, 64), P(("data", "model"), None), sizes) == (1, 64)
  assert plan_lib.local_shape((10,), P("model"), sizes) == (3,)  # uneven: padded up


def test_footprint_is_total_over_shards_for_sharded_and_total_for_replicated():
  sizes = {"data": 2, "model": 4}
  sharded = plan_lib.footprint([((64, 16), np.float32, P("model", None))], sizes)
  replicated = plan_lib.footprint([((64, 16), np.float32, P())], sizes)
  assert sharded.total_bytes == replicated.total_bytes == 64 * 16 * 4
  assert sharded.device_bytes == sharded.total_bytes // 4
  assert replicated.device_bytes == replicated.total_bytes
  both = plan_lib.footprint([((64, 16), np.float32, P("model", None)),
                             ((64, 16), "bfloat16", P())], sizes)
  assert both.device_bytes == 64 * 16 * 4 // 4 + 64 * 16 * 2
  assert both.count == 2 * 64 * 16


def test_mesh_axis_sizes_follow_make_mesh():
  assert plan_lib.mesh_axis_sizes(64, model_parallel_size=8) == {"data": 8, "model": 8}
  assert plan_lib.mesh_axis_sizes(64, mesh_shape=(16, 4)) == {"data": 16, "model": 4}
  with pytest.raises(ValueError):
    plan_lib.mesh_axis_sizes(64, model_parallel_size=6)


def _expected_frozen(model_shards: int):
  """Per-device frozen bytes computed from the logical axis names directly."""
  from prompt_tuning.train.initialize import build_model
  model = build_model()
  tokens = np.ones((1, 4), np.int32)
  boxed = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), tokens, tokens))
  flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(boxed["params"]), sep="/")
  total = device = 0
  for path, box in flat.items():
    if path.startswith("prompt/"):
      continue
    nbytes = int(np.prod(box.value.shape)) * np.dtype(box.value.dtype).itemsize
    total += nbytes
    device += nbytes // model_shards if set(box.names) & set(MODEL_SHARDED) else nbytes
  return total, device


@pytest.mark.parametrize("num_devices,model_parallel", [(8, 4), (8, 1), (64, 8)])
def test_plan_run_matches_the_partitioning_rules(num_devices, model_parallel):
  from prompt_tuning.commands.plan import plan_run
  configurables.parse(FILES, [*SMALL_MODEL, f"make_mesh.model_parallel_size = {model_parallel}"])
  result = plan_run(num_devices)
  assert result["mesh"] == {"data": num_devices // model_parallel, "model": model_parallel}
  total, device = _expected_frozen(model_parallel)
  assert result["frozen"]["total_bytes"] == total
  assert result["frozen"]["device_bytes"] == device
  # The prompt is replicated: every device holds all of it.
  assert result["trainable"]["count"] == 5 * 16
  assert result["trainable"]["device_bytes"] == result["trainable"]["total_bytes"] == 5 * 16 * 4
  assert result["optimizer_state"]["device_bytes"] > 0
  assert result["device_bytes"] == (result["frozen"]["device_bytes"]
                                    + result["trainable"]["device_bytes"]
                                    + result["optimizer_state"]["device_bytes"]
                                    + result["activations"]["device_bytes"])


def test_frozen_dtype_halves_frozen_bytes():
  from prompt_tuning.commands.plan import plan_run
  configurables.parse(FILES, list(SMALL_MODEL))
  f32 = plan_run(1)["frozen"]
  configurables.parse(FILES, [*SMALL_MODEL, "train.frozen_dtype = 'bfloat16'"])
  bf16 = plan_run(1)["frozen"]
  assert bf16["count"] == f32["count"]
  assert bf16["device_bytes"] * 2 == f32["device_bytes"]


def test_activations_shrink_with_data_shards_and_remat():
  shape = plan_lib.ActivationShape(emb_dim=16, num_heads=4, head_dim=4, mlp_dim=32, vocab_size=64,
                                   num_encoder_layers=2, num_decoder_layers=2, batch=8,
                                   encoder_length=17, decoder_length=4)
  one = plan_lib.activation_bytes(shape, data_shards=1, model_shards=1)
  assert plan_lib.activation_bytes(shape, data_shards=8, model_shards=1) * 8 == one
  remat = plan_lib.activation_bytes(
      plan_lib.ActivationShape(**{**shape.__dict__, "remat": True}), 1, 1)
  assert 0 < remat < one


def test_cli_prints_json(capsys):
  from prompt_tuning.cli import main
  argv = ["plan", *[f"--gin_file={f}" for f in FILES], *[f"--gin.{b}" for b in SMALL_MODEL],
          "--gin.make_mesh.model_parallel_size=2", "--num_devices=4", "--json"]
  with pytest.raises(SystemExit) as exit_info:
    main(argv)
  assert exit_info.value.code == 0
  result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  assert result["mesh"] == {"data": 2, "model": 2}
  assert result["num_devices"] == 4


def test_cli_rejects_a_mesh_that_does_not_divide(capsys):
  from prompt_tuning.cli import main
  argv = ["plan", *[f"--gin_file={f}" for f in FILES], *[f"--gin.{b}" for b in SMALL_MODEL],
          "--gin.make_mesh.model_parallel_size=3", "--num_devices=4"]
  with pytest.raises(SystemExit) as exit_info:
    main(argv)
  assert exit_info.value.code == 2
  assert "model_parallel_size" in capsys.readouterr().err


def test_partitioned_optimizer_groups_are_shown_with_their_own_state(capsys):
  """T5X's MultiOptimizer, as `plan` shows it: each group's parameters and state."""
  from prompt_tuning.cli import main
  argv = ["plan", *[f"--gin_file={f}" for f in (*FILES, "methods/residual.gin")],
          *[f"--gin.{b}" for b in SMALL_MODEL], "--gin.RESIDUAL_BOTTLENECK=4",
          "--gin.train.optimizer=@partitioned()", "--gin.partitioned.default=@adafactor()",
          "--gin.partitioned.by_pattern={'prompt/residual/.*': @adamw()}", "--num_devices=1",
          "--json"]
  with pytest.raises(SystemExit) as exit_info:
    main(argv)
  assert exit_info.value.code == 0
  result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  groups = {g["pattern"]: g for g in result["optimizer_groups"]}
  assert set(groups) == {"(the rest)", "prompt/residual/.*"}
  mlp = groups["prompt/residual/.*"]
  # Down and up projections with biases, and the MLP's layer norm: 16 -> 4 -> 16.
  assert mlp["parameters"] == result["trainable"]["count"] - 5 * 16
  # AdamW keeps two moments per parameter; the prompt's Adafactor far less than that.
  assert mlp["state_device_bytes"] >= 2 * 4 * mlp["parameters"]
  assert sum(g["state_device_bytes"] for g in groups.values()) == \
      result["optimizer_state"]["device_bytes"]
  assert groups["(the rest)"]["parameters"] == 5 * 16
