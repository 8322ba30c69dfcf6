"""T5X native checkpoint reading: the real tiny T5X checkpoint and synthetic ones."""
import functools
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from prompt_tuning.errors import UserError
from prompt_tuning.io import t5x
from prompt_tuning.io.backbone import flatten_paths
from prompt_tuning.models.config import T5Config
from prompt_tuning.models.t5 import T5
from tests.train_helpers import cli_process

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
TINY_T5X = SHARED / "data" / "t5x_t5_1_1_tiny" / "checkpoint_3"
needs_shared = pytest.mark.skipif(not TINY_T5X.is_dir(),
                                  reason=f"{TINY_T5X} is absent (../shared is not beside the repo)")

# Encoder and decoder depths differ so layer counting cannot mix them up.
SMALL = T5Config(vocab_size=40, emb_dim=8, num_heads=2, head_dim=4, mlp_dim=16,
                 num_encoder_layers=2, num_decoder_layers=1,
                 relative_attention_num_buckets=8, relative_attention_max_distance=20)


@functools.lru_cache(maxsize=None)
def random_params(config: T5Config, seed: int = 0):
  """Init once per config (callers must not mutate the returned arrays)."""
  tokens = jnp.ones((1, 3), jnp.int32)
  variables = T5(config).init(jax.random.PRNGKey(seed), tokens, tokens)
  return jax.tree_util.tree_map(np.asarray, nn.meta.unbox(variables)["params"])


def assert_trees_equal(a, b):
  fa, fb = flatten_paths(a), flatten_paths(b)
  assert sorted(fa) == sorted(fb)
  for k in fa:
    assert fa[k].dtype == fb[k].dtype, k
    np.testing.assert_array_equal(np.asarray(fa[k]), np.asarray(fb[k]), err_msg=k)


@pytest.fixture
def small_checkpoint(tmp_path):
  params = random_params(SMALL)
  path = tmp_path / "checkpoint_7"
  t5x.save_t5x(str(path), params, step=7)
  return path, params


def test_synthetic_round_trip_and_config(small_checkpoint):
  path, params = small_checkpoint
  # Some parameters must be zarr folders and some inline for this to test both.
  assert (path / "target.token_embedder.embedding").is_dir()
  assert not (path / "target.encoder.encoder_norm.scale").exists()
  assert_trees_equal(t5x.read_t5x_checkpoint(str(path)), params)
  assert_trees_equal(t5x.read_t5x_checkpoint(str(path / "checkpoint")), params)
  config = t5x.infer_t5x_config(params, relative_attention_max_distance=20)
  assert config == SMALL
  assert t5x.infer_t5x_config(params).relative_attention_max_distance == 128


def test_dtype_cast(small_checkpoint):
  path, _ = small_checkpoint
  config, params = t5x.load_t5x(str(path), dtype="bfloat16")
  assert config.param_dtype == "bfloat16"
  assert {x.dtype.name for x in jax.tree_util.tree_leaves(params)} == {"bfloat16"}


def test_read_variable(small_checkpoint):
  path, params = small_checkpoint
  expected = params["encoder"]["layers_1"]["mlp"]["wo"]["kernel"]
  np.testing.assert_array_equal(t5x.read_t5x_variable(str(path), "encoder/layers_1/mlp/wo/kernel"),
                                expected)
  np.testing.assert_array_equal(
      t5x.read_t5x_variable(str(path), "target/encoder/layers_1/mlp/wo/kernel"), expected)
  with pytest.raises(UserError, match=r"no variable 'encoder/layers_1/mlp/wo/kernal'.*Did you mean"):
    t5x.read_t5x_variable(str(path), "encoder/layers_1/mlp/wo/kernal")


def test_errors_name_the_file(small_checkpoint, tmp_path):
  path, _ = small_checkpoint
  data = (path / "checkpoint").read_bytes()
  (path / "checkpoint").write_bytes(data[: len(data) // 2])
  with pytest.raises(UserError, match=r"checkpoint_7/checkpoint is truncated"):
    t5x.read_t5x_checkpoint(str(path))
  with pytest.raises(UserError, match=r"has no 'checkpoint' file"):
    t5x.read_t5x_checkpoint(str(tmp_path))
  with pytest.raises(UserError, match=r"does not exist"):
    t5x.read_t5x_checkpoint(str(tmp_path / "nowhere"))


def test_missing_zarr_folder(small_checkpoint):
  path, _ = small_checkpoint
  import shutil
  shutil.rmtree(path / "target.decoder.layers_0.mlp.wi_1.kernel")
  with pytest.raises(UserError, match=r"decoder/layers_0/mlp/wi_1/kernel: zarr folder .* is missing"):
    t5x.read_t5x_checkpoint(str(path))


def test_gs_paths_use_the_gcs_driver():
  spec = {"driver": "zarr", "kvstore": {"driver": "gfile", "path": "target.a.kernel"},
          "metadata": {"shape": [2, 2], "dtype": "<f4"}}
  resolved = t5x._resolve_spec(spec, "gs://my-bucket/models/base/checkpoint_5")
  assert resolved["kvstore"] == {"driver": "gcs", "bucket": "my-bucket",
                                 "path": "models/base/checkpoint_5/target.a.kernel"}
  local = t5x._resolve_spec(spec, "/ckpt/checkpoint_5")
  assert local["kvstore"] == {"driver": "file", "path": "/ckpt/checkpoint_5/target.a.kernel"}
  absolute = dict(spec, kvstore={"driver": "gfile", "path": "gs://other/x/target.a.kernel"})
  assert t5x._resolve_spec(absolute, "/ckpt")["kvstore"] == {
      "driver": "gcs", "bucket": "other", "path": "x/target.a.kernel"}


def test_shape_mismatch_against_target_names_path(small_checkpoint):
  path, params = small_checkpoint
  target = jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), params)
  target["decoder"]["logits_dense"]["kernel"] = jax.ShapeDtypeStruct((8, 41), np.float32)
  with pytest.raises(UserError, match=r"decoder/logits_dense/kernel: checkpoint has \(8, 40\), "
                                      r"model expects \(8, 41\)"):
    t5x.read_t5x_checkpoint(str(path), target=target)


SHARDED_SCRIPT = textwrap.dedent("""
    import json, sys
    import jax, numpy as np
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
    from prompt_tuning.io import t5x
    path = sys.argv[1]
    full = t5x.read_t5x_checkpoint(path)
    mesh = Mesh(np.array(jax.devices()).reshape(2, 4), ("data", "model"))
    def spec(x):
      if x.ndim == 2 and x.shape[0] % 4 == 0:
        return P("model", None)
      return P()
    target = jax.tree_util.tree_map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=NamedSharding(mesh, spec(x))), full)
    restored = t5x.read_t5x_checkpoint(path, target=target)
    checked = 0
    for a, b, t in zip(jax.tree_util.tree_leaves(restored), jax.tree_util.tree_leaves(full),
                       jax.tree_util.tree_leaves(target)):
      assert a.sharding == t.sharding and a.dtype == b.dtype
      for shard in a.addressable_shards:
        np.testing.assert_array_equal(np.asarray(shard.data), b[shard.index])
        checked += 1
    emb = restored["token_embedder"]["embedding"]
    print(json.dumps({"checked": checked, "devices": len(jax.devices()),
                      "emb_shard": list(emb.addressable_shards[0].data.shape),
                      "emb_spec": str(emb.sharding.spec)}))
""")


def test_restore_into_sharding(small_checkpoint):
  path, _ = small_checkpoint
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8",
             JAX_PLATFORMS="cpu")
  result = subprocess.run([sys.executable, "-c", SHARDED_SCRIPT, str(path)], env=env,
                          capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  report = json.loads(result.stdout.strip().splitlines()[-1])
  assert report["devices"] == 8
  assert report["emb_shard"] == [10, 8]  # vocab 40 split over the 4-way model axis
  assert report["checked"] > 8


@needs_shared
def test_real_checkpoint_matches_zarr_contents():
  import tensorstore as ts
  from flax import serialization
  params = t5x.read_t5x_checkpoint(str(TINY_T5X))
  flat = flatten_paths(params)
  raw = serialization.msgpack_restore((TINY_T5X / "checkpoint").read_bytes())
  raw_flat = {}

  def walk(node, prefix):  # inline arrays only; tensorstore specs are dicts with a driver
    if isinstance(node, dict) and "driver" not in node:
      for k, v in node.items():
        walk(v, f"{prefix}/{k}" if prefix else k)
    elif not isinstance(node, dict):
      raw_flat[prefix] = node

  walk(raw["optimizer"]["target"], "")
  zarr_dirs = sorted(p.name for p in TINY_T5X.iterdir() if p.name.startswith("target."))
  assert len(zarr_dirs) > 20
  for name in zarr_dirs:
    # Read each zarr folder independently of the reader's path resolution.
    stored = ts.open({"driver": "zarr", "kvstore": {"driver": "file", "path": str(TINY_T5X / name)}},
                     open=True).result().read().result()
    key = name[len("target."):].replace(".", "/")
    np.testing.assert_array_equal(flat[key], stored, err_msg=key)
  assert len(raw_flat) + len(zarr_dirs) == len(flat)
  assert "encoder/relpos_bias/rel_embedding" in raw_flat
  for key in raw_flat:
    np.testing.assert_array_equal(flat[key], raw_flat[key], err_msg=key)


@needs_shared
def test_real_checkpoint_config_and_logits():
  config, params = t5x.load_t5x(str(TINY_T5X), relative_attention_max_distance=8)
  # The table in ../shared/data/README.md.
  assert (config.vocab_size, config.emb_dim, config.num_heads, config.head_dim, config.mlp_dim,
          config.num_encoder_layers, config.num_decoder_layers,
          config.relative_attention_num_buckets) == (32128, 4, 2, 2, 8, 2, 2, 4)
  encoder = jnp.array([[37, 423, 5, 1, 0, 0], [8, 1, 0, 0, 0, 0]])
  decoder = jnp.array([[0, 19, 1], [0, 7, 0]])
  apply = jax.jit(T5(config).apply)
  logits = apply({"params": params}, encoder, decoder)
  assert logits.shape == (2, 3, 32128)
  assert np.isfinite(np.asarray(logits)).all()
  # Padding must not change the result: drop the padded columns. The two
  # programs differ in shape, so XLA may pick other kernels and summation
  # orders: allow f32 reassociation error (a few ulps per reduction over
  # ~16 layers' depth) relative to the logits' scale, not one machine's value.
  trimmed = apply({"params": params}, encoder[:1, :4], decoder[:1])
  scale = float(np.abs(np.asarray(logits)).max())
  np.testing.assert_allclose(logits[:1], trimmed, rtol=1e-5, atol=1e-5 * max(scale, 1.0))


def _copy_tiny_without_a_chunk(tmp_path, chunk="1.0"):
  import shutil
  path = tmp_path / "checkpoint_3"
  shutil.copytree(TINY_T5X, path)
  (path / "target.token_embedder.embedding" / chunk).unlink()
  return path


@needs_shared
def test_a_missing_chunk_is_an_error_not_zeros(tmp_path):
  # tensorstore's zarr driver reads a missing chunk as the fill value (zeros)
  # unless told otherwise: 4096 rows of this embedding would silently be 0.
  path = _copy_tiny_without_a_chunk(tmp_path)
  message = (r"parameter token_embedder/embedding: chunk \{1, 0\} of zarr array "
             r".*target\.token_embedder\.embedding is missing \(no file .*/1\.0\)")
  with pytest.raises(UserError, match=message) as error:
    t5x.read_t5x_checkpoint(str(path))
  assert "\n" not in str(error.value)
  with pytest.raises(UserError, match=message):
    t5x.load_t5x(str(path))
  # Restoring into a sharding (how `train` reads INITIAL_CHECKPOINT_PATH) fails the same way.
  full = t5x.read_t5x_checkpoint(str(TINY_T5X))
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  target = jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device),
                                  full)
  with pytest.raises(UserError, match=message):
    t5x.read_t5x_checkpoint(str(path), target=target)
  # Other arrays and whole checkpoints still read.
  np.testing.assert_array_equal(t5x.read_t5x_variable(str(path), "decoder/logits_dense/kernel"),
                                full["decoder"]["logits_dense"]["kernel"])


@needs_shared
def test_a_truncated_chunk_is_an_error(tmp_path):
  import shutil
  path = tmp_path / "checkpoint_3"
  shutil.copytree(TINY_T5X, path)
  chunk = path / "target.token_embedder.embedding" / "2.0"
  chunk.write_bytes(chunk.read_bytes()[:100])
  with pytest.raises(UserError, match=r"parameter token_embedder/embedding: cannot read"):
    t5x.read_t5x_checkpoint(str(path))


@needs_shared
def test_convert_cli_refuses_a_checkpoint_with_a_missing_chunk(tmp_path):
  path = _copy_tiny_without_a_chunk(tmp_path, chunk="7.0")
  out = tmp_path / "backbone"
  result = cli_process(["convert", "--from", "t5x", "--input", path, "--output", out])
  assert result.returncode != 0
  errors = [l for l in result.stderr.splitlines() if l.startswith("error:")]
  assert len(errors) == 1 and "Traceback" not in result.stderr, result.stderr[-2000:]
  assert "token_embedder/embedding" in errors[0] and "chunk {7, 0}" in errors[0], errors[0]
  assert not out.exists()
