"""`prompt-tuning convert` end to end, through the CLI as users run it."""
import json
import re
import shutil
import subprocess
from pathlib import Path

import jax
import numpy as np
import pytest

from prompt_tuning.train.initialize import backbone_shapes
from prompt_tuning.io import t5x
from prompt_tuning.io.backbone import flatten_paths, load_backbone
from prompt_tuning.models.config import T5Config
from tests.train_helpers import cli_process

REPO = Path(__file__).resolve().parents[1]
HF_FIXTURE = REPO / "tests" / "fixtures" / "hf_t5_tiny"
SMALL = T5Config(vocab_size=24, emb_dim=8, num_heads=2, head_dim=4, mlp_dim=16,
                 num_encoder_layers=1, num_decoder_layers=2,
                 relative_attention_num_buckets=8, relative_attention_max_distance=32)


def convert(*args: str) -> subprocess.CompletedProcess:
  return cli_process(["convert", *args])


def random_params(config: T5Config, seed: int = 0):
  rng = np.random.default_rng(seed)
  shapes = backbone_shapes(config)
  return jax.tree_util.tree_map(lambda s: rng.normal(size=s.shape).astype(np.float32), shapes)


@pytest.fixture
def t5x_checkpoint(tmp_path):
  params = random_params(SMALL)
  path = tmp_path / "t5x" / "checkpoint_3"
  t5x.save_t5x(str(path), params, step=3)
  return path, params


def test_convert_t5x(t5x_checkpoint, tmp_path):
  path, params = t5x_checkpoint
  out = tmp_path / "out" / "backbone"
  result = convert("--from", "t5x", "--input", str(path), "--output", str(out),
                   "--relative_attention_max_distance", "32")
  assert result.returncode == 0, result.stderr
  meta = json.loads((out / "config.json").read_text())
  # The T5X step is recorded: TRAIN_STEPS counts from it, as in T5X.
  assert meta["source"] == {"format": "t5x", "path": str(path), "step": 3}
  config, restored = load_backbone(str(out))
  assert config == SMALL
  a, b = flatten_paths(restored), flatten_paths(params)
  assert sorted(a) == sorted(b)
  for k in a:
    np.testing.assert_array_equal(np.asarray(a[k]), b[k], err_msg=k)
  # The staging folder is gone: only the output remains beside it.
  assert sorted(p.name for p in out.parent.iterdir()) == ["backbone"]


def test_convert_hf_bfloat16_into_empty_folder(tmp_path):
  out = tmp_path / "backbone"
  out.mkdir()  # an empty, pre-made folder is fine
  result = convert("--from", "hf", "--input", str(HF_FIXTURE), "--output", str(out),
                   "--dtype", "bfloat16")
  assert result.returncode == 0, result.stderr
  config, params = load_backbone(str(out))
  assert config.param_dtype == "bfloat16"
  assert {np.asarray(x).dtype.name for x in jax.tree_util.tree_leaves(params)} == {"bfloat16"}
  assert json.loads((out / "config.json").read_text())["source"]["format"] == "hf"


def _truncated_t5x(tmp_path, path, params):
  data = (path / "checkpoint").read_bytes()
  (path / "checkpoint").write_bytes(data[:len(data) // 3])
  return path, r"checkpoint is truncated"


def _missing_zarr(tmp_path, path, params):
  shutil.rmtree(path / "target.decoder.layers_1.mlp.wi_0.kernel")
  return path, r"decoder/layers_1/mlp/wi_0/kernel: zarr folder .* is missing"


def _wrong_shape_t5x(tmp_path, path, params):
  params["decoder"]["layers_0"]["mlp"]["wo"]["kernel"] = np.zeros((15, 8), np.float32)
  bad = tmp_path / "bad_t5x" / "checkpoint_3"
  t5x.save_t5x(str(bad), params)
  return bad, r"decoder/layers_0/mlp/wo/kernel: checkpoint has \(15, 8\), model expects \(16, 8\)"


def _not_t5x(tmp_path, path, params):
  return tmp_path / "nowhere", r"T5X checkpoint folder .*nowhere does not exist"


@pytest.mark.parametrize("make_bad", [_truncated_t5x, _missing_zarr, _wrong_shape_t5x, _not_t5x])
def test_bad_t5x_input_is_one_line(t5x_checkpoint, tmp_path, make_bad):
  path, params = t5x_checkpoint
  bad, message = make_bad(tmp_path, path, params)
  _assert_one_line_error(convert("--from", "t5x", "--input", str(bad), "--output",
                                 str(tmp_path / "out")), message, tmp_path / "out")


def _hf_copy(tmp_path, drop_config=False, **changes):
  out = tmp_path / "hf"
  shutil.copytree(HF_FIXTURE, out)
  if drop_config:
    (out / "config.json").unlink()
  else:
    config = json.loads((out / "config.json").read_text())
    config.update(changes)
    (out / "config.json").write_text(json.dumps(config))
  return out


@pytest.mark.parametrize("kwargs, message", [
    (dict(drop_config=True), r"has no config.json"),
    (dict(d_ff=48), r"decoder/layers_0/mlp/wi_0/kernel: checkpoint has \(32, 64\), "
                    r"model expects \(32, 48\)"),
    (dict(num_layers=3), r"missing \['encoder.block.2.layer.0.SelfAttention.k.weight'"),
    (dict(tie_word_embeddings=True), r"tie_word_embeddings true"),
])
def test_bad_hf_input_is_one_line(tmp_path, kwargs, message):
  bad = _hf_copy(tmp_path, **kwargs)
  _assert_one_line_error(convert("--from", "hf", "--input", str(bad), "--output",
                                 str(tmp_path / "out")), message, tmp_path / "out")


@pytest.mark.parametrize("args, message", [
    (["--from", "pytorch"], r"unknown --from 'pytorch'"),
    (["--from", "hf", "--dtype", "float8"], r"unknown --dtype 'float8'"),
])
def test_bad_flags_are_one_line(tmp_path, args, message):
  _assert_one_line_error(convert(*args, "--input", str(HF_FIXTURE), "--output",
                                 str(tmp_path / "out")), message, tmp_path / "out")


def test_existing_output_is_left_alone(tmp_path):
  out = tmp_path / "out"
  out.mkdir()
  (out / "keep.txt").write_text("mine")
  result = convert("--from", "hf", "--input", str(HF_FIXTURE), "--output", str(out))
  assert result.returncode != 0
  assert result.stderr.strip().startswith("error:") and "already exists" in result.stderr
  assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]


def _assert_one_line_error(result: subprocess.CompletedProcess, message: str, output: Path):
  lines = result.stderr.strip().splitlines()
  assert result.returncode != 0
  assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
  assert re.search(message, lines[0]), lines[0]
  assert not output.exists()
  # No staging folder left beside the output either.
  assert not [p for p in output.parent.iterdir() if ".converting-" in p.name]
