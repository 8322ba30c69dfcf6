"""Tuned prompts and LoRA pairs exported as Hugging Face PEFT adapters."""
import json
import os
import subprocess

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


# ---- LoRA ----

FIXTURE = os.path.join(REPO, "tests", "fixtures", "hf_t5_tiny")
_PEFT_SCRIPT = r"""
import json, sys
import numpy as np
import torch
from peft import PeftModel
from transformers import T5ForConditionalGeneration
hf, adapter, data, out = sys.argv[1:5]
with np.load(data, allow_pickle=False) as d:
  enc, dec = torch.tensor(d["encoder_input_tokens"]), torch.tensor(d["decoder_input_tokens"])
model = PeftModel.from_pretrained(T5ForConditionalGeneration.from_pretrained(hf), adapter).eval()
kwargs = dict(input_ids=enc, attention_mask=(enc > 0).long(), decoder_input_ids=dec)
with torch.no_grad():
  lora = model(**kwargs).logits.numpy()
  with model.disable_adapter():
    base = model(**kwargs).logits.numpy()
names = sorted(n for n, _ in model.named_parameters() if "lora_" in n)
np.savez(out, lora=lora, base=base)
print("RESULT" + json.dumps({"lora_parameters": names}))
"""


def peft_python():
  """A Python with torch, transformers<5 and peft (`make peft_venv`), or None."""
  python = os.environ.get("PEFT_PYTHON") or os.path.join(REPO, ".bench_venv", "bin", "python")
  if not os.path.exists(python):
    return None
  check = subprocess.run([python, "-c", "import peft, torch, transformers as t; "
                          "assert int(t.__version__.split('.')[0]) < 5"], capture_output=True)
  return python if check.returncode == 0 else None


@pytest.fixture(scope="module")
def lora_export(tmp_path_factory):
  """A LoRA run's export (random non-zero pairs, the trainer's exporter) on the HF fixture."""
  import flax
  import flax.linen as nn
  import jax
  from prompt_tuning.io.backbone import load_backbone
  from prompt_tuning.methods.apet.baselines import lora_deltas
  from prompt_tuning.models.t5 import T5
  from prompt_tuning.run_dir import RunDir
  from prompt_tuning.train import exports
  tmp = tmp_path_factory.mktemp("lora")
  with pytest.raises(SystemExit) as done:
    main(["convert", "--from", "hf", "--input", FIXTURE, "--output", str(tmp / "bb")])
  assert done.value.code == 0
  config, backbone = load_backbone(str(tmp / "bb"))
  model = T5(config, deltas=lora_deltas(rank=4, alpha=12.0))
  tokens = np.ones((1, 4), np.int32)
  fresh = flax.traverse_util.flatten_dict(
      nn.meta.unbox(model.init(jax.random.PRNGKey(0), tokens, tokens))["params"], sep="/")
  rng = np.random.default_rng(0)
  params = {**fresh, **flax.traverse_util.flatten_dict(backbone, sep="/")}
  for k in params:
    if k.endswith("/lora/b"):  # B starts at zero; make the update visible
      params[k] = rng.normal(size=params[k].shape).astype(np.float32) * 0.3
  variables = {"params": flax.traverse_util.unflatten_dict(params, sep="/")}
  out = exports.export_new_variables(RunDir(tmp / "run"), "step_1", model, variables, {"step": 1})
  with np.load(os.path.join(FIXTURE, "reference.npz"), allow_pickle=False) as ref:
    data = dict(ref)
  logits = np.asarray(jax.jit(model.apply)(variables, data["encoder_input_tokens"],
                                           data["decoder_input_tokens"]))
  return {"dir": tmp, "export": out, "logits": logits, "reference": data, "params": params}


def test_lora_export_has_peft_names_and_shapes(lora_export, tmp_path, capsys):
  with pytest.raises(SystemExit) as done:
    main(["export", "--deltas", lora_export["export"], "--checkpoint",
          str(lora_export["dir"] / "bb"), "--output", str(tmp_path / "adapter")])
  assert done.value.code == 0
  assert "LoRA r=4 alpha=12 on 8 modules" in capsys.readouterr().out
  adapter = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
  # Self-attention only: ['q', 'v'] would also match EncDecAttention, so full names are listed.
  assert adapter["peft_type"] == "LORA" and (adapter["r"], adapter["lora_alpha"]) == (4, 12)
  assert adapter["task_type"] == "SEQ_2_SEQ_LM" and len(adapter["target_modules"]) == 8
  assert "decoder.block.1.layer.0.SelfAttention.v" in adapter["target_modules"]
  tensors = load_file(str(tmp_path / "adapter" / "adapter_model.safetensors"))
  key = "base_model.model.encoder.block.0.layer.0.SelfAttention.q"
  a = lora_export["params"]["encoder/layers_0/attention/query/lora/a"]
  b = lora_export["params"]["encoder/layers_0/attention/query/lora/b"]
  np.testing.assert_array_equal(tensors[f"{key}.lora_A.weight"], a.T)  # [r, in]
  np.testing.assert_array_equal(tensors[f"{key}.lora_B.weight"], b.T)  # [out, r]
  assert len(tensors) == 16
  with pytest.raises(UserError, match="already holds a PEFT adapter"):
    from prompt_tuning.io import peft
    peft.save_peft_lora(str(tmp_path / "adapter"), {}, 4, 12.0, T5Config())


def test_lora_adapter_gives_our_logits_in_peft(lora_export, tmp_path):
  python = peft_python()
  if python is None:
    pytest.skip("no Python with torch, transformers<5 and peft: run `make peft_venv` "
                "(or set PEFT_PYTHON)")
  with pytest.raises(SystemExit) as done:
    main(["export", "--deltas", lora_export["export"], "--checkpoint",
          str(lora_export["dir"] / "bb"), "--output", str(tmp_path / "adapter"),
          "--hf_output", str(tmp_path / "hf")])
  assert done.value.code == 0
  data = tmp_path / "data.npz"
  np.savez(data, **lora_export["reference"])
  proc = subprocess.run([python, "-c", _PEFT_SCRIPT, str(tmp_path / "hf"), str(tmp_path / "adapter"),
                         str(data), str(tmp_path / "out.npz")], capture_output=True, text=True,
                        timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  names = json.loads(proc.stdout.split("RESULT")[-1])["lora_parameters"]
  assert len(names) == 16 and not any("EncDecAttention" in n for n in names)
  with np.load(tmp_path / "out.npz", allow_pickle=False) as out:
    lora, base = out["lora"], out["base"]
  ref = lora_export["reference"]
  valid = (ref["decoder_input_tokens"] > 0) | (np.arange(ref["decoder_input_tokens"].shape[1]) == 0)
  # f32 logits of size ~10 from two frameworks: differences of a few 1e-6 of the scale.
  atol = 1e-5 * np.abs(ref["logits"]).max()
  # The call matches the fixture's reference (the adapter off), and LoRA moved the logits.
  np.testing.assert_allclose(base[valid], ref["logits"][valid], rtol=1e-5, atol=atol)
  ours = lora_export["logits"]
  assert np.abs(ours - ref["logits"])[valid].max() > 1e-2
  err = np.abs(lora[valid] - ours[valid]).max()
  print(f"PEFT LoRA vs ours: max |logit difference| {err:.2e} (logits up to "
        f"{np.abs(ours[valid]).max():.2f})")
  np.testing.assert_allclose(lora[valid], ours[valid], rtol=1e-5, atol=atol)


def test_only_lora_exports_become_peft_lora_adapters():
  from prompt_tuning.commands.export import lora_pairs
  apet = {"plan": [{"modules": "x", "insertion": {"op": "add", "name": "bias"}}],
          "methods": ["add"]}
  with pytest.raises(UserError, match="src holds add; PEFT export takes LoRA runs"):
    lora_pairs({"params/x/bias/bias": np.zeros(3)}, apet, "src")
  mixed = {"plan": [{"modules": "a", "insertion": {"op": "lora", "rank": 2, "alpha": 4.0,
                                                     "name": "lora"}},
                    {"modules": "b", "insertion": {"op": "lora", "rank": 4, "alpha": 4.0,
                                                     "name": "lora"}}], "methods": ["lora"]}
  with pytest.raises(UserError, match="mixes LoRA settings"):
    lora_pairs({}, mixed, "src")
