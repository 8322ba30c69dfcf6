"""A tuned prompt exported as a Hugging Face PEFT prompt-tuning adapter."""
import json
import os

import numpy as np
import pytest
from safetensors.numpy import load_file

from prompt_tuning.cli import main
from prompt_tuning.errors import UserError
from prompt_tuning.io.peft import load_peft_prompt, save_peft_prompt
from prompt_tuning.models.config import T5Config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_adapter_holds_the_prompt_and_an_encoder_only_config(tmp_path):
  config = T5Config(emb_dim=32, num_heads=4, num_encoder_layers=2)
  prompt = np.random.default_rng(0).normal(size=(5, 32)).astype(np.float32)
  save_peft_prompt(str(tmp_path / "a"), prompt, config)
  np.testing.assert_array_equal(load_file(str(tmp_path / "a" / "adapter_model.safetensors"))
                                ["prompt_embeddings"], prompt)
  adapter = json.loads((tmp_path / "a" / "adapter_config.json").read_text())
  assert adapter["peft_type"] == "PROMPT_TUNING" and adapter["num_transformer_submodules"] == 1
  assert (adapter["num_virtual_tokens"], adapter["token_dim"]) == (5, 32)
  np.testing.assert_array_equal(load_peft_prompt(str(tmp_path / "a")), prompt)
  with pytest.raises(UserError, match="d_model 32"):
    save_peft_prompt(str(tmp_path / "b"), prompt[:, :16], config)


def test_export_command_writes_adapter_and_hf_backbone(tmp_path, capsys):
  for argv in (["convert", "--from", "hf", "--input", os.path.join(REPO, "tests/fixtures/hf_t5_tiny"),
                "--output", str(tmp_path / "bb")],):
    with pytest.raises(SystemExit) as done:
      main(argv)
    assert done.value.code == 0
  np.save(tmp_path / "p.npy", np.ones((3, 32), np.float32))
  with pytest.raises(SystemExit) as done:
    main(["export", "--prompt", str(tmp_path / "p.npy"), "--checkpoint", str(tmp_path / "bb"),
          "--output", str(tmp_path / "adapter"), "--hf_output", str(tmp_path / "hf")])
  assert done.value.code == 0
  assert load_peft_prompt(str(tmp_path / "adapter")).shape == (3, 32)
  assert (tmp_path / "hf" / "config.json").exists()
