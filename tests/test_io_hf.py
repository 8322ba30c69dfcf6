"""Hugging Face T5 v1.1 import: numerical parity with transformers, name map, exporter.

The fixture in tests/fixtures/hf_t5_tiny was written by scripts/make_hf_fixture.py
(random weights, transformers' own logits, log-likelihoods and greedy outputs).
"""
import json
import shutil
from pathlib import Path

import jax
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from prompt_tuning.errors import UserError
from prompt_tuning.io import hf
from prompt_tuning.io.backbone import flatten_paths, load_backbone
from prompt_tuning.models.t5 import T5
from tests.train_helpers import cli_process

REPO = Path(__file__).resolve().parents[1]
FIXTURE = REPO / "tests" / "fixtures" / "hf_t5_tiny"
TINY_T5X = REPO.parent / "shared" / "data" / "t5x_t5_1_1_tiny" / "checkpoint_3"


@pytest.fixture(scope="module")
def reference():
  with np.load(FIXTURE / "reference.npz", allow_pickle=False) as data:
    return dict(data)


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
  """The fixture imported the way users do it: `prompt-tuning convert --from hf`."""
  out = tmp_path_factory.mktemp("hf") / "backbone"
  result = cli_process(["convert", "--from", "hf", "--input", FIXTURE, "--output", out])
  assert result.returncode == 0, result.stderr
  return load_backbone(str(out))


def test_fixture_exercises_padding(reference):
  enc = reference["encoder_input_tokens"]
  lengths = (enc > 0).sum(1)
  assert len(set(lengths.tolist())) == len(lengths) and lengths.min() < enc.shape[1]


def test_logits_match_transformers(converted, reference):
  config, params = converted
  logits = jax.jit(T5(config).apply)({"params": params}, reference["encoder_input_tokens"],
                                     reference["decoder_input_tokens"])
  np.testing.assert_allclose(np.asarray(logits), reference["logits"], rtol=1e-5, atol=1e-5)


def test_log_likelihood_matches_transformers(converted, reference):
  from prompt_tuning.models.inference import InferenceModel
  config, params = converted
  scores = InferenceModel(T5(config), params).score(reference["encoder_input_tokens"],
                                                    reference["decoder_target_tokens"])
  np.testing.assert_allclose(scores, reference["log_likelihood"], rtol=1e-5, atol=1e-5)


def test_greedy_matches_transformers_generate(converted, reference):
  from prompt_tuning.models.decoding import generate
  config, params = converted
  expected = reference["greedy_tokens"]
  tokens, _ = jax.jit(lambda p, x: generate(T5(config), p, x, max_decode_length=expected.shape[1]))(
      params, reference["encoder_input_tokens"])
  np.testing.assert_array_equal(np.asarray(tokens), expected)


def test_config_from_fixture(converted):
  config, _ = converted
  hf_config = json.loads((FIXTURE / "config.json").read_text())
  assert (config.emb_dim, config.num_heads, config.head_dim, config.mlp_dim, config.vocab_size,
          config.num_encoder_layers, config.num_decoder_layers,
          config.relative_attention_num_buckets, config.relative_attention_max_distance) == (
              hf_config["d_model"], hf_config["num_heads"], hf_config["d_kv"], hf_config["d_ff"],
              hf_config["vocab_size"], hf_config["num_layers"], hf_config["num_decoder_layers"],
              hf_config["relative_attention_num_buckets"],
              hf_config["relative_attention_max_distance"])


def test_name_map_transposes_linear_weights():
  config, params = hf.load_hf(str(FIXTURE))
  tensors = load_file(str(FIXTURE / "model.safetensors"))
  np.testing.assert_array_equal(params["encoder"]["layers_1"]["attention"]["query"]["kernel"],
                                tensors["encoder.block.1.layer.0.SelfAttention.q.weight"].T)
  np.testing.assert_array_equal(params["decoder"]["relpos_bias"]["rel_embedding"],
                                tensors["decoder.block.0.layer.0.SelfAttention."
                                        "relative_attention_bias.weight"].T)
  np.testing.assert_array_equal(params["decoder"]["logits_dense"]["kernel"],
                                tensors["lm_head.weight"].T)
  np.testing.assert_array_equal(params["token_embedder"]["embedding"], tensors["shared.weight"])
  # Every HF tensor is used exactly once (the embedding aliases aside).
  used = {name for name, _ in hf.hf_name_map(config).values()}
  assert used == set(tensors) - set(hf.EMBEDDING_NAMES[1:])


def _copy_fixture(tmp_path, tensors=None, **config_changes):
  out = tmp_path / "model"
  out.mkdir()
  hf_config = json.loads((FIXTURE / "config.json").read_text())
  hf_config.update(config_changes)
  (out / "config.json").write_text(json.dumps(hf_config))
  if tensors is None:
    shutil.copy(FIXTURE / "model.safetensors", out / "model.safetensors")
  else:
    save_file(tensors, str(out / "model.safetensors"))
  return out


def test_sharded_checkpoint_loads_like_single_file(tmp_path):
  tensors = load_file(str(FIXTURE / "model.safetensors"))
  out = _copy_fixture(tmp_path, tensors={"shared.weight": tensors["shared.weight"]})
  (out / "model.safetensors").unlink()
  names = sorted(tensors)
  halves = {"model-00001-of-00002.safetensors": names[::2],
            "model-00002-of-00002.safetensors": names[1::2]}
  weight_map = {}
  for file_name, part in halves.items():
    save_file({n: tensors[n] for n in part}, str(out / file_name))
    weight_map.update({n: file_name for n in part})
  (out / hf.INDEX_FILE).write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
  config_a, a = hf.load_hf(str(out))
  config_b, b = hf.load_hf(str(FIXTURE))
  assert config_a == config_b
  fa, fb = flatten_paths(a), flatten_paths(b)
  assert sorted(fa) == sorted(fb)
  for k in fa:
    np.testing.assert_array_equal(fa[k], fb[k], err_msg=k)


def test_bfloat16_import():
  config, params = hf.load_hf(str(FIXTURE), dtype="bfloat16")
  assert config.param_dtype == "bfloat16"
  assert {x.dtype.name for x in jax.tree_util.tree_leaves(params)} == {"bfloat16"}


@pytest.mark.parametrize("changes, message", [
    ({"tie_word_embeddings": True}, "tie_word_embeddings true"),
    ({"feed_forward_proj": "relu"}, "feed_forward_proj 'relu'"),
    ({"model_type": "bart"}, "model_type 'bart'"),
])
def test_config_rejects_non_v1_1(tmp_path, changes, message):
  with pytest.raises(UserError, match=message):
    hf.load_hf(str(_copy_fixture(tmp_path, **changes)))


def test_missing_and_unexpected_tensors_are_named(tmp_path):
  tensors = load_file(str(FIXTURE / "model.safetensors"))
  del tensors["decoder.block.1.layer.2.DenseReluDense.wo.weight"]
  tensors["encoder.block.0.layer.0.SelfAttention.q.bias"] = np.zeros(32, np.float32)
  with pytest.raises(UserError, match=r"missing \['decoder.block.1.layer.2.DenseReluDense.wo.weight'\]"
                                      r".*unexpected \['encoder.block.0.layer.0.SelfAttention.q.bias'\]"):
    hf.load_hf(str(_copy_fixture(tmp_path, tensors=tensors)))


def test_export_round_trip(tmp_path):
  config, params = hf.load_hf(str(FIXTURE))
  hf.save_hf(str(tmp_path / "out"), config, params)
  # Same tensors (names, values, layout) as transformers wrote.
  written = load_file(str(tmp_path / "out" / "model.safetensors"))
  original = load_file(str(FIXTURE / "model.safetensors"))
  for name, value in written.items():
    np.testing.assert_array_equal(value, original[name], err_msg=name)
  assert set(original) - set(written) <= set(hf.EMBEDDING_NAMES[1:])
  config_b, _ = hf.load_hf(str(tmp_path / "out"))
  assert config_b == config


@pytest.mark.skipif(not TINY_T5X.is_dir(), reason=f"{TINY_T5X} is absent (../shared not beside the repo)")
def test_t5x_to_hf_round_trip(tmp_path):
  from prompt_tuning.io.t5x import load_t5x
  config, params = load_t5x(str(TINY_T5X), relative_attention_max_distance=8)
  hf.save_hf(str(tmp_path / "hf"), config, params)
  config_b, params_b = hf.load_hf(str(tmp_path / "hf"))
  assert config_b == config
  a, b = flatten_paths(params), flatten_paths(params_b)
  assert sorted(a) == sorted(b)
  for k in a:
    assert a[k].dtype == b[k].dtype, k
    np.testing.assert_array_equal(a[k], b[k], err_msg=k)
