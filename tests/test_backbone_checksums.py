"""Backbone folders carry per-parameter checksums that every load verifies."""
import json
import logging
import os
import shutil
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest

from prompt_tuning.train.initialize import backbone_shapes
from prompt_tuning.errors import UserError
from prompt_tuning.io import checksums
from prompt_tuning.io.backbone import CHECKSUMS_FILE, flatten_paths, load_backbone, save_backbone
from prompt_tuning.models.config import T5Config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL = T5Config(vocab_size=24, emb_dim=8, num_heads=2, head_dim=4, mlp_dim=16,
                 num_encoder_layers=1, num_decoder_layers=1,
                 relative_attention_num_buckets=8, relative_attention_max_distance=32)


def random_params(seed: int):
  rng = np.random.default_rng(seed)
  return jax.tree_util.tree_map(lambda s: rng.normal(size=s.shape).astype(np.float32),
                                backbone_shapes(SMALL))


@pytest.fixture
def backbone(tmp_path):
  path = tmp_path / "backbone"
  params = random_params(0)
  save_backbone(str(path), SMALL, params)
  return path, params


def test_checksums_are_written_and_verified(backbone):
  path, params = backbone
  manifest = json.loads((path / CHECKSUMS_FILE).read_text())
  assert manifest["algorithm"] == checksums.ALGORITHM
  assert sorted(manifest["params"]) == sorted(flatten_paths(params))
  record = manifest["params"]["token_embedder/embedding"]
  assert record["shape"] == [24, 8] and set(record["sums"]) == {"float32", "bfloat16", "float16"}
  _, restored = load_backbone(str(path))
  for key, value in flatten_paths(restored).items():
    np.testing.assert_array_equal(np.asarray(value), flatten_paths(params)[key])


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_a_cast_on_restore_is_verified_too(backbone, dtype):
  path, _ = backbone
  _, restored = load_backbone(str(path), dtype=dtype)  # Orbax's cast matches the recorded one
  assert {x.dtype.name for x in jax.tree_util.tree_leaves(restored)} == {dtype}
  manifest = json.loads((path / CHECKSUMS_FILE).read_text())
  manifest["params"]["encoder/layers_0/mlp/wo/kernel"]["sums"][dtype] = "0" * 16
  (path / CHECKSUMS_FILE).write_text(json.dumps(manifest))
  with pytest.raises(UserError, match=r"layers_0/mlp/wo/kernel does not match its checksum"):
    load_backbone(str(path), dtype=dtype)
  load_backbone(str(path))  # the float32 sums are intact


def test_other_valid_data_under_the_same_names_is_refused(backbone, tmp_path):
  path, _ = backbone
  other = tmp_path / "other"
  save_backbone(str(other), SMALL, random_params(1))
  shutil.rmtree(path / "params")
  shutil.copytree(other / "params", path / "params")
  with pytest.raises(UserError) as error:
    load_backbone(str(path))
  message = str(error.value)
  assert "\n" not in message and "does not match its checksum" in message
  assert "re-run `prompt-tuning convert`" in message
  assert any(name in message for name in flatten_paths(random_params(0)))


def test_a_lost_data_file_is_a_one_line_error(backbone):
  path, _ = backbone
  data = [os.path.join(d, f) for d, _, files in os.walk(path / "params") for f in files
          if os.sep + "d" + os.sep in os.path.join(d, f)]
  assert data, sorted(os.listdir(path / "params"))
  for f in data:
    os.remove(f)
  with pytest.raises(UserError, match=r"backbone .*: params/.* incomplete or corrupt") as error:
    load_backbone(str(path))
  assert "\n" not in str(error.value)


def test_a_folder_without_checksums_loads_with_one_warning(backbone, caplog):
  path, params = backbone
  (path / CHECKSUMS_FILE).unlink()
  with caplog.at_level(logging.WARNING):
    load_backbone(str(path))
    load_backbone(str(path))
  warnings = [r for r in caplog.records if CHECKSUMS_FILE in r.getMessage()]
  assert len(warnings) == 1 and "not verified" in warnings[0].getMessage()


def test_a_damaged_manifest_is_an_error(backbone):
  path, _ = backbone
  (path / CHECKSUMS_FILE).write_text('{"algorithm": ')
  with pytest.raises(UserError, match=r"checksums.json is damaged"):
    load_backbone(str(path))


def test_checksums_see_every_element_and_its_position():
  x = np.random.default_rng(0).normal(size=(64, 16)).astype(np.float32)
  reference = checksums.array_checksum(x)
  assert checksums.array_checksum(jax.numpy.asarray(x)) == reference
  changed = [x.copy() for _ in range(4)]
  changed[0][5, 3] = np.nextafter(changed[0][5, 3], np.float32(np.inf))  # one ulp
  changed[1][:16] = 0  # a zero-filled chunk
  changed[2] = x[::-1].copy()  # same values, other places
  changed[3] = x.reshape(16, 64)  # same bytes, other shape: the record's shape differs
  assert len({reference, *(checksums.array_checksum(c) for c in changed[:3])}) == 4
  records = checksums.tree_records({"a": x})
  assert checksums.find_mismatch(records, {"a": x}) is None
  assert "shape" in checksums.find_mismatch(records, {"a": changed[3]})
  assert "b has no recorded checksum" in checksums.find_mismatch(records, {"a": x, "b": x})
  assert "a is recorded but was not restored" in checksums.find_mismatch(records, {"b": x})


SHARDED = textwrap.dedent("""
    import json, sys
    import jax, numpy as np
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
    from prompt_tuning.io import checksums
    from prompt_tuning.io.backbone import load_backbone
    mesh = Mesh(np.array(jax.devices()).reshape(2, 4), ("data", "model"))
    x = np.random.default_rng(0).normal(size=(24, 8)).astype(np.float32)
    same = {spec: checksums.array_checksum(jax.device_put(x, NamedSharding(mesh, spec)))
            == checksums.array_checksum(x) for spec in (P("model", None), P(None, "model"),
                                                        P("data", "model"), P())}
    _, full = load_backbone(sys.argv[1])
    def spec(a):
      return P("model", None) if a.ndim == 2 and a.shape[0] % 4 == 0 else P()
    target = jax.tree_util.tree_map(
        lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=NamedSharding(mesh, spec(a))),
        full)
    _, sharded = load_backbone(sys.argv[1], target=target)  # verified shard by shard
    split = sum(not a.is_fully_replicated for a in jax.tree_util.tree_leaves(sharded))
    print("RESULT" + json.dumps({"same": all(same.values()), "split": split}))
""")


def test_sharded_arrays_are_verified_where_they_live(backbone):
  path, _ = backbone
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8",
             JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3")
  result = subprocess.run([sys.executable, "-c", SHARDED, str(path)], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  report = json.loads(result.stdout.split("RESULT")[-1])
  assert report["same"] and report["split"] > 3
