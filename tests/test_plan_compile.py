"""`plan --compile`, `NUM_MICROBATCHES='auto'`, train's fit check and `ACTIVATION_DTYPE`.

XLA's memory comes from compiling the run's real train step with abstract weights
(`train.step_memory`); the estimate (`plan`) must agree with it where the CPU
compiler is representative (float32, no remat; docs/performance.md says where
it is not).
"""
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from prompt_tuning import configurables
from prompt_tuning.errors import UserError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FILES = ("runs/prompt_finetune.gin", "prompts/prompt.gin")
SMALL_MODEL = (
    "build_model.model_config = @T5Config()",
    "T5Config.vocab_size = 64", "T5Config.emb_dim = 16", "T5Config.num_heads = 4",
    "T5Config.head_dim = 4", "T5Config.mlp_dim = 32", "T5Config.num_encoder_layers = 1",
    "T5Config.num_decoder_layers = 1", "T5Config.relative_attention_num_buckets = 8",
    "MODEL_DIR = '/unused'", "MIXTURE_OR_TASK_NAME = 'unused'", "INITIAL_CHECKPOINT_PATH = None",
    "PROMPT_LENGTH = 4", "BATCH_SIZE = 8", "TASK_FEATURE_LENGTHS = {'inputs': 28, 'targets': 4}",
    "DROPOUT_RATE = 0.0",
)


@pytest.mark.slow
def test_estimate_is_within_15_percent_of_xla_over_meshes_and_microbatches():
  """bench/plan_vs_compiler.py's grid (tiny T5, fake CPU devices): estimate / XLA per device."""
  env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8",
         "JAX_PLATFORMS": "cpu", "PYTHONPATH": REPO}
  proc = subprocess.run([sys.executable, os.path.join(REPO, "bench", "plan_vs_compiler.py"),
                         "--grid", "test"], env=env, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-2000:]
  rows = [json.loads(l) for l in proc.stdout.splitlines() if l.startswith("{")]
  assert {r["name"] for r in rows} == {"base", "devices=4+model_parallel=2",
                                      "devices=8+model_parallel=1", "microbatches=2"}
  for r in rows:
    assert 0.85 <= r["ratio"] <= 1.15, r
  by_name = {r["name"]: r for r in rows}
  # The activations XLA keeps shrink with data shards and microbatches, as estimated.
  assert by_name["devices=8+model_parallel=1"]["xla_temp"] < by_name["base"]["xla_temp"] / 4
  assert by_name["microbatches=2"]["xla_temp"] < by_name["base"]["xla_temp"] * 0.75


def _compiled(microbatches):
  from prompt_tuning.commands.plan import compiled_step_memory
  return compiled_step_memory(microbatches).device_bytes


@pytest.mark.slow
def test_auto_microbatches_is_the_smallest_count_that_fits(capsys):
  from prompt_tuning.commands.plan import _gin_value
  from prompt_tuning.train import step_memory
  configurables.parse(FILES, [*SMALL_MODEL, "NUM_MICROBATCHES = 'auto'"])
  one, two = _compiled(1), _compiled(2)
  assert two < one
  common = dict(batch_size=8, task_feature_lengths={"inputs": 28, "targets": 4},
                optimizer=_gin_value("train.optimizer"),
                frozen_dtype=None)
  assert step_memory.check_run_fits("auto", (two + one) / 2 / 2 ** 30, **common) == 2
  assert step_memory.check_run_fits("auto", one / 2 ** 30, **common) == 1
  assert "NUM_MICROBATCHES='auto': 2" in capsys.readouterr().out
  with pytest.raises(UserError, match="even with NUM_MICROBATCHES=8"):
    step_memory.check_run_fits("auto", 1e-6, **common)
  with pytest.raises(UserError, match="NUM_MICROBATCHES='auto' .a count that fits"):
    step_memory.check_run_fits(1, two / 2 ** 30, **common)  # one microbatch needs more
  # On CPU nothing is compiled without a bound, and 'auto' then has nothing to fit.
  assert step_memory.check_run_fits(1, None, **common) == 1
  with pytest.raises(UserError, match="train.device_memory_gib"):
    step_memory.check_run_fits("auto", None, **common)


@pytest.mark.slow
def test_cli_compiles_on_fake_devices_and_refuses_what_xla_says_does_not_fit(capsys):
  from prompt_tuning.cli import main
  argv = ["plan", *[f"--gin_file={f}" for f in FILES], *[f"--gin.{b}" for b in SMALL_MODEL],
          "--gin.make_mesh.model_parallel_size=2", "--num_devices=4", "--compile", "--json"]
  with pytest.raises(SystemExit) as exit_info:
    main(argv)
  assert exit_info.value.code == 0
  result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  assert result["mesh"] == {"data": 2, "model": 2} and result["num_devices"] == 4
  xla = result["compiled"]
  assert xla["device_bytes"] == (xla["argument_bytes"] + xla["output_bytes"]
                                 - xla["alias_bytes"] + xla["temp_bytes"])
  # Arguments are this device's shard of the weights, not all of them.
  assert xla["argument_bytes"] < result["frozen"]["total_bytes"]
  with pytest.raises(SystemExit) as exit_info:
    main([a for a in argv if a != "--json"] + ["--device_memory_gib=0.00001"])
  assert exit_info.value.code == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and "by XLA, more than the 1e-05 GiB of one device" in err[0]


@pytest.mark.parametrize("model_file, dtype", [("models/t5_1_1_xxl_prompt.gin", "bfloat16"),
                                               ("models/t5_1_1_small_prompt.gin", "bfloat16"),
                                               ("models/t5_1_1_tiny_prompt.gin", "float32")])
def test_activation_dtype_defaults(model_file, dtype):
  from prompt_tuning.train.initialize import build_model
  configurables.parse([model_file], [])
  assert build_model().config.dtype == dtype
  configurables.parse([model_file], ["ACTIVATION_DTYPE = 'float32'"])
  assert build_model().config.dtype == "float32"


def test_a_bad_activation_dtype_is_one_error_naming_the_macro():
  from prompt_tuning.train.initialize import build_model
  configurables.parse(["models/t5_1_1_tiny_prompt.gin"], ["ACTIVATION_DTYPE = 'bf16'"])
  with pytest.raises(UserError, match=r"ACTIVATION_DTYPE \(T5Config.dtype\) = 'bf16'"):
    build_model()


@pytest.mark.slow
def test_bfloat16_activations_match_float32_to_bfloat16_precision():
  """Same weights, both dtypes: loss and prompt gradient agree to bf16's ~3 significant digits
  (8-bit mantissa: 2**-8 relative per rounding; a few roundings per layer)."""
  from prompt_tuning.models import losses
  from prompt_tuning.models.config import T5Config
  from prompt_tuning.models.t5 import T5
  from prompt_tuning.prompts.prompt import Prompt
  import flax.linen as nn
  config = T5Config(vocab_size=128, emb_dim=32, num_heads=4, head_dim=8, mlp_dim=64,
                    num_encoder_layers=2, num_decoder_layers=2,
                    relative_attention_num_buckets=8)
  rng = np.random.default_rng(0)
  enc = jnp.asarray(rng.integers(1, 128, (4, 12)), jnp.int32)
  dec = jnp.asarray(rng.integers(1, 128, (4, 5)), jnp.int32)
  model = T5(config, prompt=Prompt(length=3))
  params = nn.meta.unbox(model.init(jax.random.PRNGKey(0), enc, dec))

  def loss_and_grad(dtype):
    m = T5(config.replace(dtype=dtype), prompt=Prompt(length=3))

    def loss(prompt):
      p = {**params, "params": {**params["params"], "prompt": prompt}}
      logits = m.apply(p, enc, dec)
      return losses.cross_entropy_with_z_loss(logits, dec, jnp.ones(dec.shape))[0]
    return jax.value_and_grad(loss)(params["params"]["prompt"])

  loss32, grad32 = loss_and_grad("float32")
  loss16, grad16 = loss_and_grad("bfloat16")
  np.testing.assert_allclose(loss16, loss32, rtol=2e-2)
  g32 = np.concatenate([np.ravel(x) for x in jax.tree_util.tree_leaves(grad32)])
  g16 = np.concatenate([np.ravel(x) for x in jax.tree_util.tree_leaves(grad16)]).astype(np.float32)
  assert np.abs(g32).max() > 0
  cosine = g16 @ g32 / np.linalg.norm(g16) / np.linalg.norm(g32)
  assert cosine > 0.99


def test_on_cpu_a_bfloat16_run_is_compiled_with_float32_activations_and_says_so(capsys):
  """XLA:CPU keeps bf16 math in float32 and both copies (19.4 GiB for XXL on v3-32 at 8
  microbatches, where float32 needs 9.1): plan --compile bounds a bf16 run by its float32 step."""
  from prompt_tuning.cli import main
  argv = ["plan", *[f"--gin_file={f}" for f in FILES], *[f"--gin.{b}" for b in SMALL_MODEL],
          "--compile"]
  results = {}
  for dtype in ("float32", "bfloat16"):
    with pytest.raises(SystemExit) as exit_info:
      main([*argv, f"--gin.T5Config.dtype='{dtype}'", "--json"])
    assert exit_info.value.code == 0
    results[dtype] = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  bf16, f32 = results["bfloat16"], results["float32"]
  assert bf16["model"]["activation_dtype"] == "bfloat16"
  assert bf16["compiled"]["activation_dtype"] == f32["compiled"]["activation_dtype"] == "float32"
  assert bf16["compiled"]["device_bytes"] == f32["compiled"]["device_bytes"]
  assert bf16["device_bytes"] < f32["device_bytes"]  # the estimate stays the bf16 run's
  with pytest.raises(SystemExit):
    main([*argv, "--gin.T5Config.dtype='bfloat16'"])
  assert "compiled with float32 activations, an upper bound of the run's bfloat16" in (
      capsys.readouterr().out)
