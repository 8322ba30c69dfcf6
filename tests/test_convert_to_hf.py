"""`prompt-tuning convert --to hf`, and T5X checkpoints taken by score / generate / export.

No torch at test time: transformers' numbers are committed fixtures.
`hf_t5_tiny/reference.npz` holds what transformers computes on the fixture folder, so a
folder we write with the same tensors and architecture gives those logits there;
`t5x_tiny_hf_logits.npz` (scripts/make_t5x_hf_fixture.py) holds what transformers computes
on the folder written from the real T5X checkpoint in ../shared/data.
"""
import json
import os

import jax
import numpy as np
import pytest
from safetensors.numpy import load_file

from prompt_tuning.cli import main
from prompt_tuning.io.checksums import flatten_paths
from prompt_tuning.io.hf import load_hf
from prompt_tuning.models.t5 import T5

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HF = os.path.join(REPO, "tests", "fixtures", "hf_t5_tiny")
T5X_LOGITS = os.path.join(REPO, "tests", "fixtures", "t5x_tiny_hf_logits.npz")
# What transformers reads to build the model; the rest of config.json is bookkeeping.
ARCHITECTURE = ("architectures", "model_type", "d_model", "d_kv", "d_ff", "num_heads",
                "num_layers", "num_decoder_layers", "vocab_size", "feed_forward_proj",
                "relative_attention_num_buckets", "relative_attention_max_distance",
                "layer_norm_epsilon", "tie_word_embeddings", "decoder_start_token_id",
                "pad_token_id", "eos_token_id", "is_encoder_decoder")


def _run(*argv):
  with pytest.raises(SystemExit) as done:
    main(list(argv))
  return done.value.code


def _one_error_line(capsys, *words):
  lines = capsys.readouterr().err.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("error: "), lines
  for word in words:
    assert word in lines[0], lines[0]


def test_backbone_to_hf_gives_back_the_transformers_folder(tmp_path, capsys):
  assert _run("convert", "--from", "hf", "--input", HF, "--output", str(tmp_path / "bb")) == 0
  # --from is read from the folder's files.
  assert _run("convert", "--to", "hf", "--input", str(tmp_path / "bb"), "--output",
              str(tmp_path / "hf")) == 0
  assert "wrote Hugging Face T5 folder" in capsys.readouterr().out
  ours, theirs = (load_file(os.path.join(d, "model.safetensors")) for d in (tmp_path / "hf", HF))
  assert sorted(ours) == sorted(theirs)  # T5ForConditionalGeneration names, lm_head untied
  for name in theirs:
    np.testing.assert_array_equal(ours[name], theirs[name], err_msg=name)
  ours = json.loads((tmp_path / "hf" / "config.json").read_text())
  theirs = json.loads(open(os.path.join(HF, "config.json")).read())
  assert {k: ours.get(k) for k in ARCHITECTURE} == {k: theirs.get(k) for k in ARCHITECTURE}
  assert sorted(p.name for p in tmp_path.iterdir()) == ["bb", "hf"]  # no staging left


def test_t5x_checkpoint_to_hf_has_transformers_logits(shared_data, tmp_path, capsys):
  checkpoint = str(shared_data / "t5x_t5_1_1_tiny" / "checkpoint_3")
  assert _run("convert", "--to", "hf", "--input", checkpoint, "--output", str(tmp_path / "hf"),
              "--relative_attention_max_distance", "8") == 0
  from prompt_tuning.io.t5x import load_t5x  # pylint: disable=g-import-not-at-top
  config, params = load_t5x(checkpoint, 8)
  back_config, back = load_hf(str(tmp_path / "hf"))
  assert back_config == config
  a, b = flatten_paths(back), flatten_paths(params)
  assert sorted(a) == sorted(b)
  for k in a:
    np.testing.assert_array_equal(a[k], b[k], err_msg=k)
  # Our model on the T5X checkpoint gives what transformers gave on the converted folder.
  with np.load(T5X_LOGITS, allow_pickle=False) as ref:
    ref = dict(ref)
  logits = np.asarray(jax.jit(T5(config).apply)({"params": params}, ref["encoder_input_tokens"],
                                                ref["decoder_input_tokens"]))
  valid = ref["decoder_target_tokens"] > 0
  err = np.abs(logits[..., ref["columns"]] - ref["logits"])[valid].max()
  print(f"ours on T5X vs transformers on --to hf: max |logit diff| {err:.2e}")
  assert err <= 1e-4
  log_probs = jax.nn.log_softmax(logits)
  ll = np.take_along_axis(np.asarray(log_probs), ref["decoder_target_tokens"][..., None], -1)
  np.testing.assert_allclose((ll[..., 0] * valid).sum(-1), ref["log_likelihood"], atol=1e-4)


def test_to_hf_failures_are_one_line_and_write_nothing(tmp_path, capsys):
  out = tmp_path / "out"
  assert _run("convert", "--to", "hf", "--input", HF, "--output", str(out)) == 2
  _one_error_line(capsys, "is a Hugging Face folder already")
  assert _run("convert", "--to", "hf", "--from", "hf", "--input", HF, "--output", str(out)) == 2
  _one_error_line(capsys, "--from 'hf' for --to hf")
  assert _run("convert", "--to", "pytorch", "--input", HF, "--output", str(out)) == 2
  _one_error_line(capsys, "unknown --to 'pytorch'")
  assert _run("convert", "--input", HF, "--output", str(out)) == 2
  _one_error_line(capsys, "needs --from")
  assert _run("convert", "--to", "hf", "--input", str(tmp_path / "nowhere"), "--output",
              str(out)) == 2
  _one_error_line(capsys, "nowhere does not exist")
  assert not out.exists()
  assert not [p for p in tmp_path.iterdir() if ".converting-" in p.name]


def test_unreachable_gcs_checkpoint_is_one_line(tmp_path, capsys, monkeypatch):
  from tests.test_offline_gcs import _free_port  # pylint: disable=g-import-not-at-top
  from prompt_tuning import fs  # pylint: disable=g-import-not-at-top
  monkeypatch.setenv(fs.GCS_PROBE_ENV, f"127.0.0.1:{_free_port()}")  # nothing listens there
  fs._gcs_unreachable.cache_clear()  # pylint: disable=protected-access
  source = "gs://bucket/t5x/checkpoint_1100000"
  (tmp_path / "in.jsonl").write_text('{"inputs": "x", "targets": "y"}\n')
  try:
    assert _run("score", "--checkpoint", source, "--vocab", str(tmp_path / "in.jsonl"),
                "--inputs_file", str(tmp_path / "in.jsonl")) == 2
    _one_error_line(capsys, source, "cannot be reached", "--checkpoint")
    assert _run("convert", "--to", "hf", "--input", source, "--output",
                str(tmp_path / "hf")) == 2
    _one_error_line(capsys, source, "cannot be reached", "--input")
  finally:
    fs._gcs_unreachable.cache_clear()  # pylint: disable=protected-access
  assert not (tmp_path / "hf").exists()


def test_score_generate_export_take_a_t5x_checkpoint(shared_data, vocab, tmp_path, capsys):
  checkpoint = str(shared_data / "t5x_t5_1_1_tiny" / "checkpoint_3")
  assert _run("convert", "--to", "hf", "--input", checkpoint, "--output", str(tmp_path / "hf"),
              "--relative_attention_max_distance", "8") == 0
  (tmp_path / "in.jsonl").write_text('{"inputs": "is it good?", "targets": "yes"}\n'
                                     '{"inputs": "a second one", "targets": "no"}\n')

  def score(source, *flags):
    out = tmp_path / "out.jsonl"
    assert _run("score", "--checkpoint", source, "--vocab", vocab, "--inputs_file",
                str(tmp_path / "in.jsonl"), "--output", str(out), *flags) == 0
    return [json.loads(l)["log_likelihood"] for l in out.read_text().splitlines()]

  capsys.readouterr()
  from_t5x = score(checkpoint, "--relative_attention_max_distance", "8")
  assert "relative_attention_max_distance" not in capsys.readouterr().err  # given: no note
  np.testing.assert_allclose(from_t5x, score(str(tmp_path / "hf")), rtol=1e-6)
  # Without the flag T5 1.1's 128 is assumed, and said (with 4 buckets this model's
  # biases do not depend on it).
  score(checkpoint)
  assert "does not store relative_attention_max_distance" in capsys.readouterr().err
  assert _run("generate", "--checkpoint", checkpoint, "--vocab", vocab, "--inputs_file",
              str(tmp_path / "in.jsonl"), "--max_decode_length", "3",
              "--relative_attention_max_distance", "8") == 0
  assert len(capsys.readouterr().out.splitlines()) == 2
  np.save(tmp_path / "p.npy", np.ones((2, 4), np.float32))
  assert _run("export", "--prompt", str(tmp_path / "p.npy"), "--checkpoint", checkpoint,
              "--relative_attention_max_distance", "8", "--output", str(tmp_path / "adapter"),
              "--hf_output", str(tmp_path / "hf2")) == 0
  for name, value in load_file(str(tmp_path / "hf" / "model.safetensors")).items():
    np.testing.assert_array_equal(
        load_file(str(tmp_path / "hf2" / "model.safetensors"))[name], value, err_msg=name)
