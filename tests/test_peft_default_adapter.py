"""PEFT's default seq2seq prompt adapters (`num_transformer_submodules=2`), both ways.

`tests/fixtures/peft_t5_tiny` was trained in PEFT 0.22 on `hf_t5_tiny` by
`scripts/make_peft_fixture.py`, with what PEFT computes on it committed beside it, so
these tests need no torch. The one test that runs PEFT itself skips without it.
"""
import json
import os
import subprocess

import numpy as np
import pytest
from safetensors.numpy import load_file

from prompt_tuning.cli import main
from prompt_tuning.prompts.files import read_prompt, read_prompts
from prompt_tuning.prompts.tuned_model import load_tuned_model
from tests.test_peft_export import peft_python

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HF = os.path.join(REPO, "tests", "fixtures", "hf_t5_tiny")
ADAPTER = os.path.join(REPO, "tests", "fixtures", "peft_t5_tiny")


def _data():
  with np.load(os.path.join(HF, "reference.npz"), allow_pickle=False) as inputs, \
       np.load(os.path.join(ADAPTER, "reference.npz"), allow_pickle=False) as peft:
    return dict(inputs), dict(peft)


def _logits(model, inputs):
  import jax  # pylint: disable=g-import-not-at-top
  return np.asarray(jax.jit(model.model.apply)(
      {"params": model.params}, inputs["encoder_input_tokens"], inputs["decoder_input_tokens"]))


@pytest.fixture(scope="module")
def tuned():
  # Straight from the Hugging Face folder: score/generate take one as --checkpoint.
  return load_tuned_model(HF, ADAPTER)


def test_adapter_scores_and_decodes_as_in_peft(tuned, capsys):
  inputs, peft = _data()
  prompt, half = read_prompts(ADAPTER)
  assert prompt.shape == half.shape == (int(peft["prompt_length"]), 32)
  logits = _logits(tuned, inputs)
  err = np.abs(logits - peft["logits"]).max()
  scores = tuned.score(inputs["encoder_input_tokens"], inputs["decoder_target_tokens"])
  score_err = np.abs(scores - peft["log_likelihood"]).max()
  print(f"ours vs PEFT: max |logit diff| {err:.2e}, max |log-likelihood diff| {score_err:.2e}")
  # f32 against PEFT's f64 on logits of size ~10: a few 1e-6 expected; the bar is 1e-4.
  assert err <= 1e-4 and score_err <= 1e-4
  # The prompt matters: without it the logits are the base model's.
  with np.load(os.path.join(HF, "reference.npz"), allow_pickle=False) as base:
    assert np.abs(logits - base["logits"]).max() > 1e-2
  tokens, _ = tuned.generate(inputs["encoder_input_tokens"], max_decode_length=8)
  np.testing.assert_array_equal(tokens, peft["greedy_tokens"])


def test_unapplied_half_is_said_once(tmp_path, capsys):
  path = str(tmp_path / "adapter")
  import shutil  # pylint: disable=g-import-not-at-top
  shutil.copytree(ADAPTER, path)
  read_prompt(path, "--prompt")
  read_prompt(path, "--prompt")
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and err[0].startswith("note: --prompt ")
  assert "num_transformer_submodules=2" in err[0] and "not applied" in err[0]


def test_export_writes_peft_default_layout(tmp_path, capsys):
  # The adapter goes back out as it came: PEFT's rows and config, byte for byte.
  with pytest.raises(SystemExit) as done:
    main(["export", "--prompt", ADAPTER, "--checkpoint", HF, "--output", str(tmp_path / "a")])
  assert done.value.code == 0
  assert "num_transformer_submodules=2" in capsys.readouterr().out
  ours = json.loads((tmp_path / "a" / "adapter_config.json").read_text())
  theirs = json.loads(open(os.path.join(ADAPTER, "adapter_config.json")).read())
  for key in ("peft_type", "task_type", "num_virtual_tokens", "token_dim",
              "num_transformer_submodules", "num_attention_heads", "num_layers"):
    assert ours[key] == theirs[key], key
  np.testing.assert_array_equal(
      load_file(str(tmp_path / "a" / "adapter_model.safetensors"))["prompt_embeddings"],
      load_file(os.path.join(ADAPTER, "adapter_model.safetensors"))["prompt_embeddings"])
  # A .npy prompt into PEFT's default layout: the unapplied half is zeros.
  prompt = read_prompt(ADAPTER)
  np.save(tmp_path / "p.npy", prompt)
  with pytest.raises(SystemExit) as done:
    main(["export", "--prompt", str(tmp_path / "p.npy"), "--checkpoint", HF, "--output",
          str(tmp_path / "b"), "--num_transformer_submodules", "2"])
  assert done.value.code == 0
  rows = load_file(str(tmp_path / "b" / "adapter_model.safetensors"))["prompt_embeddings"]
  np.testing.assert_array_equal(rows, np.concatenate([prompt, np.zeros_like(prompt)]))
  # And back to encoder-only on request.
  with pytest.raises(SystemExit) as done:
    main(["export", "--prompt", ADAPTER, "--checkpoint", HF, "--output", str(tmp_path / "c"),
          "--num_transformer_submodules", "1"])
  assert done.value.code == 0
  assert json.loads((tmp_path / "c" / "adapter_config.json").read_text())[
      "num_transformer_submodules"] == 1
  capsys.readouterr()  # the exports' note lines above
  with pytest.raises(SystemExit) as done:
    main(["export", "--prompt", ADAPTER, "--checkpoint", HF, "--output", str(tmp_path / "d"),
          "--num_transformer_submodules", "3"])
  assert done.value.code == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and "--num_transformer_submodules" in err[0] and "got 3" in err[0], err
  assert not (tmp_path / "d").exists()


_PEFT_SCRIPT = r"""
import sys
import numpy as np
import torch
from peft import PeftModel
from transformers import T5ForConditionalGeneration
hf, adapter, data, out = sys.argv[1:5]
with np.load(data, allow_pickle=False) as d:
  enc, dec = torch.tensor(d["encoder_input_tokens"]), torch.tensor(d["decoder_input_tokens"])
model = PeftModel.from_pretrained(T5ForConditionalGeneration.from_pretrained(hf), adapter).eval()
assert model.peft_config["default"].num_transformer_submodules == 2
with torch.no_grad():
  logits = model(input_ids=enc, attention_mask=(enc > 0).long(), decoder_input_ids=dec).logits
np.save(out, logits.numpy())
"""


def test_peft_loads_our_export_with_our_logits(tuned, tmp_path):
  python = peft_python()
  if python is None:
    pytest.skip("no Python with torch, transformers<5 and peft: run `make peft_venv` "
                "(or set PEFT_PYTHON)")
  inputs, _ = _data()
  np.save(tmp_path / "p.npy", read_prompt(ADAPTER))
  with pytest.raises(SystemExit) as done:
    main(["export", "--prompt", str(tmp_path / "p.npy"), "--checkpoint", HF, "--output",
          str(tmp_path / "adapter"), "--num_transformer_submodules", "2"])
  assert done.value.code == 0
  proc = subprocess.run([python, "-c", _PEFT_SCRIPT, HF, str(tmp_path / "adapter"),
                         os.path.join(HF, "reference.npz"), str(tmp_path / "out.npy")],
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  theirs, ours = np.load(tmp_path / "out.npy"), _logits(tuned, inputs)
  err = np.abs(theirs - ours).max()
  print(f"PEFT on our export vs ours: max |logit diff| {err:.2e}")
  assert err <= 1e-4
