"""Hugging Face PEFT prompt-tuning adapters wherever a prompt file is accepted."""
import json
import os

import numpy as np
import pytest
from safetensors.numpy import save_file

from prompt_tuning.cli import main
from prompt_tuning.errors import UserError
from prompt_tuning.io.peft import save_peft_prompt
from prompt_tuning.models.config import T5Config
from prompt_tuning.prompts.files import read_prompt, read_prompts
from prompt_tuning.prompts.initializers import from_file

PROMPT = np.random.default_rng(0).normal(size=(4, 8)).astype(np.float32)
CONFIG = T5Config(vocab_size=32128, emb_dim=8, num_heads=2, head_dim=4, mlp_dim=16,
                  num_encoder_layers=1, num_decoder_layers=1,
                  relative_attention_num_buckets=8, relative_attention_max_distance=16)


def _peft_folder(path, prompt, submodules=1, weights=True):
  """A folder as PEFT's `save_pretrained` writes a PROMPT_TUNING adapter."""
  os.makedirs(path, exist_ok=True)
  tokens = prompt.shape[0] // submodules
  if weights:
    save_file({"prompt_embeddings": prompt}, os.path.join(path, "adapter_model.safetensors"))
  with open(os.path.join(path, "adapter_config.json"), "w") as f:
    json.dump({"peft_type": "PROMPT_TUNING", "task_type": "SEQ_2_SEQ_LM",
               "num_virtual_tokens": tokens, "token_dim": prompt.shape[1],
               "num_transformer_submodules": submodules, "prompt_tuning_init": "TEXT",
               "base_model_name_or_path": "google/t5-base-lm-adapt", "revision": None,
               "inference_mode": True}, f)
  return str(path)


def test_npy_adapter_folder_and_safetensors_give_the_same_prompt(tmp_path):
  np.save(tmp_path / "p.npy", PROMPT)
  folder = _peft_folder(tmp_path / "adapter", PROMPT)
  for path in (str(tmp_path / "p.npy"), folder, os.path.join(folder, "adapter_model.safetensors")):
    np.testing.assert_array_equal(read_prompt(path), PROMPT)
    init = from_file(path)
    np.testing.assert_array_equal(np.asarray(init(None, (4, 8), None)), PROMPT)
  with pytest.raises(UserError, match=r"PROMPT_LENGTH 5 disagrees with the 4 tokens of"):
    from_file(folder)(None, (5, 8), None)


def test_seq2seq_default_adapter_gives_its_first_half(tmp_path, capsys):
  # PEFT's default for seq2seq models stores 2 x num_virtual_tokens rows but applies the first
  # half only (tests/test_peft_default_adapter.py checks against PEFT itself).
  half = np.full_like(PROMPT, 7.0)
  folder = _peft_folder(tmp_path / "two", np.concatenate([PROMPT, half]), submodules=2)
  np.testing.assert_array_equal(read_prompt(folder), PROMPT)
  assert "its other 4 rows are not applied" in capsys.readouterr().err
  np.testing.assert_array_equal(read_prompts(folder)[1], half)
  # PEFT fills in 2 for SEQ_2_SEQ_LM when the config leaves it out.
  config = json.loads((tmp_path / "two" / "adapter_config.json").read_text())
  config["num_transformer_submodules"] = None
  (tmp_path / "two" / "adapter_config.json").write_text(json.dumps(config))
  np.testing.assert_array_equal(read_prompt(folder), PROMPT)
  # Rows that are not num_virtual_tokens x submodules are refused.
  bad = _peft_folder(tmp_path / "bad", np.concatenate([PROMPT, PROMPT[:1]]), submodules=2)
  with pytest.raises(UserError, match="shape \\(5, 8\\).*2 submodules"):
    read_prompt(bad)


def test_other_files_are_refused_in_one_line(tmp_path):
  folder = _peft_folder(tmp_path / "pickled", PROMPT, weights=False)
  (tmp_path / "pickled" / "adapter_model.bin").write_bytes(b"\x80\x04pickle")
  with pytest.raises(UserError, match="never unpickled"):
    read_prompt(folder)
  save_file({"prompt_embeddings": PROMPT}, str(tmp_path / "lonely.safetensors"))
  with pytest.raises(UserError, match="no adapter_config.json beside it"):
    read_prompt(str(tmp_path / "lonely.safetensors"))
  (tmp_path / "x.npy").write_bytes(b"\x80\x04\x95pickled")
  with pytest.raises(UserError, match="is a pickle"):
    read_prompt(str(tmp_path / "x.npy"))
  with pytest.raises(UserError, match="does not exist"):
    read_prompt(str(tmp_path / "missing.npy"))
  lora = _peft_folder(tmp_path / "lora", PROMPT)
  config = json.loads((tmp_path / "lora" / "adapter_config.json").read_text())
  (tmp_path / "lora" / "adapter_config.json").write_text(json.dumps({**config, "peft_type": "LORA"}))
  with pytest.raises(UserError, match="LORA adapter"):
    read_prompt(lora)


def _eval_context(tmp_path, folder, *bindings):
  import gin  # pylint: disable=g-import-not-at-top
  from prompt_tuning import configurables  # pylint: disable=g-import-not-at-top
  from prompt_tuning.train import eval_run  # pylint: disable=g-import-not-at-top
  configurables.parse(["models/t5_1_1_toy_prompt.gin", "runs/prompt_eval.gin"],
                      ["MIXTURE_OR_TASK_NAME = 'toy_parity'",
                       "MIXTURE_OR_TASK_MODULE = 'prompt_tuning.data.toy_tasks'",
                       "INITIAL_CHECKPOINT_PATH = None",
                       "TASK_FEATURE_LENGTHS = {'inputs': 16, 'targets': 8}",
                       f"MODEL_DIR = '{tmp_path}'", f"PROMPT_FILE = '{folder}'", *bindings])
  config = gin.get_bindings(eval_run.evaluate)
  return eval_run.load_run(config["mixture_or_task_name"], config["mixture_or_task_module"],
                           config["task_feature_lengths"], config["initial_checkpoint_path"])


def test_eval_loads_a_peft_adapter_as_prompt_file(tmp_path):
  prompt = np.random.default_rng(1).normal(size=(4, 32)).astype(np.float32)  # the toy model
  folder = _peft_folder(tmp_path / "adapter", prompt)
  np.testing.assert_array_equal(_eval_context(tmp_path, folder).exported_prompt(), prompt)


def test_prompt_length_comes_from_the_adapter(tmp_path):
  # 6 tokens, PEFT's seq2seq layout; the toy model's gin says PROMPT_LENGTH = 4.
  prompt = np.random.default_rng(2).normal(size=(6, 32)).astype(np.float32)
  folder = _peft_folder(tmp_path / "adapter", np.concatenate([prompt, 0 * prompt]), submodules=2)
  np.testing.assert_array_equal(_eval_context(tmp_path, folder).exported_prompt(), prompt)
  with pytest.raises(UserError) as error:
    _eval_context(tmp_path, folder, "PROMPT_LENGTH = 5")
  message = str(error.value)
  assert "PROMPT_LENGTH 5 disagrees with the 6 tokens of PROMPT_FILE" in message
  assert "\n" not in message


def test_export_names_the_backbone_by_absolute_path(tmp_path, monkeypatch):
  from prompt_tuning.io.backbone import save_backbone  # pylint: disable=g-import-not-at-top
  from prompt_tuning.train.initialize import backbone_shapes  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  params = jax.tree_util.tree_map(lambda s: np.zeros(s.shape, np.float32),
                                  backbone_shapes(CONFIG))
  save_backbone(str(tmp_path / "bb"), CONFIG, params)
  np.save(tmp_path / "p.npy", PROMPT)
  monkeypatch.chdir(tmp_path)
  with pytest.raises(SystemExit) as done:
    main(["export", "--prompt", "p.npy", "--checkpoint", "bb", "--output", "adapter",
          "--hf_output", "hf"])
  assert done.value.code == 0
  base = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())[
      "base_model_name_or_path"]
  assert os.path.isabs(base) and os.path.samefile(base, tmp_path / "hf")
  monkeypatch.chdir("/")  # the adapter is found back from anywhere
  np.testing.assert_array_equal(read_prompt(str(tmp_path / "adapter")), PROMPT)
  # Re-exporting into the same folder fails before anything is written.
  with pytest.raises(SystemExit):
    main(["export", "--prompt", str(tmp_path / "p.npy"), "--checkpoint", str(tmp_path / "bb"),
          "--output", str(tmp_path / "adapter"), "--hf_output", str(tmp_path / "hf2")])
  assert not (tmp_path / "hf2").exists()


def test_auto_peft_model_loads_the_export_from_another_folder(tmp_path, monkeypatch):
  peft = pytest.importorskip("peft")  # not in requirements.lock: checked where installed
  del peft
  from prompt_tuning.io.backbone import save_backbone  # pylint: disable=g-import-not-at-top
  from prompt_tuning.train.initialize import backbone_shapes  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  params = jax.tree_util.tree_map(lambda s: rng.normal(size=s.shape).astype(np.float32),
                                  backbone_shapes(CONFIG))
  save_backbone(str(tmp_path / "bb"), CONFIG, params)
  np.save(tmp_path / "p.npy", PROMPT)
  with pytest.raises(SystemExit):
    main(["export", "--prompt", str(tmp_path / "p.npy"), "--checkpoint", str(tmp_path / "bb"),
          "--output", str(tmp_path / "adapter"), "--hf_output", str(tmp_path / "hf")])
  from peft import AutoPeftModelForSeq2SeqLM  # pylint: disable=g-import-not-at-top
  monkeypatch.chdir("/")
  model = AutoPeftModelForSeq2SeqLM.from_pretrained(str(tmp_path / "adapter"))
  assert model is not None



def test_score_and_generate_take_a_prompt(tmp_path, vocab, capsys):
  from prompt_tuning.io.backbone import save_backbone  # pylint: disable=g-import-not-at-top
  from prompt_tuning.train.initialize import backbone_shapes  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  params = jax.tree_util.tree_map(lambda s: (0.5 * rng.normal(size=s.shape)).astype(np.float32),
                                  backbone_shapes(CONFIG))
  save_backbone(str(tmp_path / "bb"), CONFIG, params)
  np.save(tmp_path / "p.npy", PROMPT)
  save_peft_prompt(str(tmp_path / "adapter"), PROMPT, CONFIG)
  (tmp_path / "in.jsonl").write_text('{"inputs": "is it good?", "targets": "yes"}\n'
                                     '{"inputs": "a second one", "targets": "no"}\n')

  def score(*prompt):
    out = tmp_path / "out.jsonl"
    with pytest.raises(SystemExit) as done:
      main(["score", "--checkpoint", str(tmp_path / "bb"), "--vocab", vocab,
            "--inputs_file", str(tmp_path / "in.jsonl"), "--output", str(out), *prompt])
    assert done.value.code == 0
    return [json.loads(l)["log_likelihood"] for l in out.read_text().splitlines()]

  bare, with_npy = score(), score("--prompt", str(tmp_path / "p.npy"))
  assert with_npy == score("--prompt", str(tmp_path / "adapter"))
  assert not np.allclose(bare, with_npy)
  with pytest.raises(SystemExit) as done:
    main(["generate", "--checkpoint", str(tmp_path / "bb"), "--vocab", vocab, "--inputs_file",
          str(tmp_path / "in.jsonl"), "--max_decode_length", "4",
          "--prompt", str(tmp_path / "adapter")])
  assert done.value.code == 0
  assert len(capsys.readouterr().out.splitlines()) == 2
  np.save(tmp_path / "wide.npy", np.zeros((4, 16), np.float32))
  with pytest.raises(SystemExit) as done:
    main(["score", "--checkpoint", str(tmp_path / "bb"), "--vocab", vocab, "--inputs_file",
          str(tmp_path / "in.jsonl"), "--prompt", str(tmp_path / "wide.npy")])
  assert done.value.code == 2
  assert "d_model 8" in capsys.readouterr().err
