"""Export a tuned prompt as a Hugging Face PEFT prompt-tuning adapter (and read one back).

PEFT's encoder-only prompt tuning of a seq2seq model (`num_transformer_submodules=1`)
prepends `prompt_embeddings [P, E]` to the encoder's input embeddings, exactly as
the `prefix` placement here does, so a prompt tuned with this project runs in
PEFT on the same backbone exported with `prompt_tuning.io.hf.save_hf`.

Layout: `DIR/adapter_model.safetensors` (`prompt_embeddings`) + `DIR/adapter_config.json`.
`base_model_name_or_path` is written as an absolute path, so
`AutoPeftModelForSeq2SeqLM.from_pretrained(DIR)` finds the backbone from any
working directory. `load_peft_prompt` reads such an adapter (or one trained in
PEFT) back; `PROMPT_FILE` and `--prompt` accept it.
"""
import json
import os
from typing import Optional

import numpy as np

from prompt_tuning.errors import UserError
from prompt_tuning.models.config import T5Config

WEIGHTS = "adapter_model.safetensors"
CONFIG = "adapter_config.json"


def _absolute(base_model: Optional[str]) -> Optional[str]:
  """A local base-model folder as an absolute path (found from any working directory);
  a hub name or URL unchanged."""
  if base_model and "://" not in base_model and os.path.exists(base_model):
    return os.path.abspath(base_model)
  return base_model


def save_peft_prompt(path: str, prompt: np.ndarray, config: T5Config,
                     base_model_name_or_path: Optional[str] = None) -> None:
  """Writes `prompt` `[P, E]` as a PEFT PROMPT_TUNING adapter folder."""
  from safetensors.numpy import save_file
  prompt = np.asarray(prompt, np.float32)
  if prompt.ndim != 2 or prompt.shape[1] != config.emb_dim:
    raise UserError(f"prompt of shape {prompt.shape} does not fit d_model {config.emb_dim}; "
                    "export a prompt tuned on this backbone")
  if os.path.exists(os.path.join(path, CONFIG)):
    raise UserError(f"{path} already holds a PEFT adapter; choose a new --output folder")
  os.makedirs(path, exist_ok=True)
  save_file({"prompt_embeddings": np.ascontiguousarray(prompt)}, os.path.join(path, WEIGHTS))
  adapter = {
      "peft_type": "PROMPT_TUNING", "task_type": "SEQ_2_SEQ_LM",
      "num_virtual_tokens": int(prompt.shape[0]), "token_dim": config.emb_dim,
      "num_transformer_submodules": 1, "num_attention_heads": config.num_heads,
      "num_layers": config.num_encoder_layers, "prompt_tuning_init": "RANDOM",
      "inference_mode": True, "base_model_name_or_path": _absolute(base_model_name_or_path),
  }
  with open(os.path.join(path, CONFIG), "w") as f:
    json.dump(adapter, f, indent=2, sort_keys=True)


def is_safetensors(path: str) -> bool:
  """Whether `path` is a safetensors file (an 8-byte header size, then a JSON header)."""
  from prompt_tuning import fs
  with fs.open_file(path, "rb") as f:
    head = f.read(9)
  return len(head) == 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") > 1


def load_peft_prompt(path: str) -> np.ndarray:
  """The encoder prompt `[P, E]` of a PEFT PROMPT_TUNING adapter (folder or its safetensors).

  Args:
    path: the adapter folder (`adapter_config.json` + `adapter_model.safetensors`)
      or its `.safetensors` file (the config beside it is read too).

  Raises:
    UserError: not a PEFT prompt-tuning adapter, pickled weights, or an adapter
      whose prompt also feeds the decoder (`num_transformer_submodules=2`, PEFT's
      seq2seq default), which this model cannot apply.
  """
  from safetensors.numpy import load as load_safetensors

  from prompt_tuning import fs
  if fs.isdir(path):
    folder, weights = path, fs.join(path, WEIGHTS)
    if not fs.exists(weights):
      pickled = fs.exists(fs.join(path, "adapter_model.bin"))
      raise UserError(f"{path} has no {WEIGHTS}" + (
          " (only the pickled adapter_model.bin, which is never unpickled here: re-save the "
          "adapter with safe_serialization=True)" if pickled else
          ": not a PEFT adapter folder; pass the folder holding adapter_config.json and "
          f"{WEIGHTS}"))
  else:
    folder, weights = os.path.dirname(path) or ".", path
  config_path = fs.join(folder, CONFIG)
  adapter = fs.read_json(config_path)
  if adapter is None:
    raise UserError(f"{weights} has no {CONFIG} beside it, so the number of virtual tokens and "
                    "submodules is unknown; pass the PEFT adapter folder as saved by "
                    "save_pretrained()")
  if adapter.get("peft_type") != "PROMPT_TUNING":
    raise UserError(f"{folder} is a {adapter.get('peft_type')} adapter; only PEFT PROMPT_TUNING "
                    "adapters hold a soft prompt")
  tokens = int(adapter.get("num_virtual_tokens") or 0)
  submodules = int(adapter.get("num_transformer_submodules") or 1)
  with fs.open_file(weights, "rb") as f:
    tensors = load_safetensors(f.read())
  if "prompt_embeddings" not in tensors:
    raise UserError(f"{weights} holds {sorted(tensors)}, not PEFT's prompt_embeddings")
  value = np.asarray(tensors["prompt_embeddings"], np.float32)
  if value.ndim != 2 or (tokens and value.shape[0] != tokens * submodules):
    raise UserError(f"{weights}: prompt_embeddings has shape {value.shape}, but {CONFIG} says "
                    f"{tokens} virtual tokens x {submodules} submodules")
  if submodules != 1:
    count = tokens or value.shape[0] // submodules
    raise UserError(
        f"{folder} is a PEFT adapter with num_transformer_submodules={submodules} (PEFT's seq2seq "
        f"default: its prompt also feeds the decoder), which prompt tuning here cannot apply; "
        f"train it with PromptTuningConfig(..., num_transformer_submodules=1) (encoder-only, what "
        f"`prompt-tuning export` writes), or save its first {count} rows (the encoder prompt) "
        "as .npy to use them alone")
  return value
