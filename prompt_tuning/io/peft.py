"""Export a tuned prompt as a Hugging Face PEFT prompt-tuning adapter (and read one back).

PEFT's encoder-only prompt tuning of a seq2seq model (`num_transformer_submodules=1`)
prepends `prompt_embeddings [P, E]` to the encoder's input embeddings, exactly as
the `prefix` placement here does, so a prompt tuned with this project runs in
PEFT on the same backbone exported with `prompt_tuning.io.hf.save_hf`.

Layout: `DIR/adapter_model.safetensors` (`prompt_embeddings`) + `DIR/adapter_config.json`.
"""
import json
import os
from typing import Optional

import numpy as np

from prompt_tuning.errors import UserError
from prompt_tuning.models.config import T5Config

WEIGHTS = "adapter_model.safetensors"
CONFIG = "adapter_config.json"


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
      "inference_mode": True, "base_model_name_or_path": base_model_name_or_path,
  }
  with open(os.path.join(path, CONFIG), "w") as f:
    json.dump(adapter, f, indent=2, sort_keys=True)


def load_peft_prompt(path: str) -> np.ndarray:
  """The `[P, E]` prompt of a PEFT PROMPT_TUNING adapter folder (encoder-only)."""
  from safetensors.numpy import load_file
  try:
    with open(os.path.join(path, CONFIG)) as f:
      adapter = json.load(f)
  except FileNotFoundError:
    raise UserError(f"{path} has no {CONFIG}: not a PEFT adapter folder") from None
  if adapter.get("peft_type") != "PROMPT_TUNING" or adapter.get("num_transformer_submodules", 1) != 1:
    raise UserError(f"{path} is a {adapter.get('peft_type')} adapter with "
                    f"{adapter.get('num_transformer_submodules')} submodules; only encoder-only "
                    "PROMPT_TUNING adapters map onto a soft prompt")
  return load_file(os.path.join(path, WEIGHTS))["prompt_embeddings"].astype(np.float32)
