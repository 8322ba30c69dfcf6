"""Export tuned prompts and LoRA pairs as Hugging Face PEFT adapters (and read prompts back).

PEFT's encoder-only prompt tuning of a seq2seq model (`num_transformer_submodules=1`)
prepends `prompt_embeddings [P, E]` to the encoder's input embeddings, exactly as
the `prefix` placement here does, so a prompt tuned with this project runs in
PEFT on the same backbone exported with `prompt_tuning.io.hf.save_hf`.

PEFT's LoRA on a `torch.nn.Linear` computes `x Wᵀ + (lora_alpha / r) · x Aᵀ Bᵀ`
with `lora_A.weight` `[r, in]` and `lora_B.weight` `[out, r]`; ours is
`x W + (alpha / r) · x a b` with `a` `[in, r]`, `b` `[r, out]`, so
`lora_A.weight = aᵀ`, `lora_B.weight = bᵀ`, `lora_alpha = alpha`. Module names
are those of `T5ForConditionalGeneration` (`io.hf.hf_name_map`), keys as PEFT
saves them: `base_model.model.encoder.block.0.layer.0.SelfAttention.q.lora_A.weight`.

Layout: `DIR/adapter_model.safetensors` + `DIR/adapter_config.json`.
"""
import json
import os
from typing import Dict, Optional, Tuple

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


def lora_module_names(config: T5Config) -> Dict[str, str]:
  """Our dense module path -> its `T5ForConditionalGeneration` module name."""
  from prompt_tuning.io.hf import hf_name_map
  return {ours[:-len("/kernel")]: theirs[:-len(".weight")]
          for ours, (theirs, _) in hf_name_map(config).items() if ours.endswith("/kernel")}


def save_peft_lora(path: str, pairs: Dict[str, Tuple[np.ndarray, np.ndarray]], rank: int,
                   alpha: float, config: T5Config,
                   base_model_name_or_path: Optional[str] = None) -> Dict[str, object]:
  """Writes LoRA pairs as a PEFT LORA adapter folder for T5ForConditionalGeneration.

  Args:
    path: new folder.
    pairs: our dense module path (`encoder/layers_0/attention/query`) -> (a `[in, r]`,
      b `[r, out]`).
    rank, alpha: r and α of every pair (PEFT's `r`, `lora_alpha`; scale α / r).
    config: the backbone's config.
    base_model_name_or_path: recorded in the adapter config.

  Returns:
    the adapter config written. `target_modules` is the modules' leaf names
    (`['q', 'v']`) when those name exactly the tuned modules (PEFT matches names by
    suffix), else the full module names, so PEFT never adds pairs the run did not train.
  """
  from safetensors.numpy import save_file
  names = lora_module_names(config)
  unknown = sorted(set(pairs) - set(names))
  if unknown:
    raise UserError(f"LoRA on {unknown[0]} has no Hugging Face T5 module; only dense layers "
                    "export to PEFT")
  if os.path.exists(os.path.join(path, CONFIG)):
    raise UserError(f"{path} already holds a PEFT adapter; choose a new --output folder")
  tensors = {}
  for module, (a, b) in sorted(pairs.items()):
    a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
    if a.shape[1] != rank or b.shape[0] != rank:
      raise UserError(f"LoRA at {module} has rank {a.shape[1]}, not {rank}; PEFT's config holds "
                      "one rank for all modules")
    prefix = f"base_model.model.{names[module]}"
    tensors[f"{prefix}.lora_A.weight"] = np.ascontiguousarray(a.T)
    tensors[f"{prefix}.lora_B.weight"] = np.ascontiguousarray(b.T)
  tuned = sorted(names[m] for m in pairs)
  leaves = sorted({n.rsplit(".", 1)[-1] for n in tuned})
  with_leaves = sorted(n for n in names.values() if n.rsplit(".", 1)[-1] in leaves)
  adapter = {
      "peft_type": "LORA", "task_type": "SEQ_2_SEQ_LM", "r": int(rank),
      "lora_alpha": int(alpha) if float(alpha).is_integer() else float(alpha),
      "target_modules": leaves if with_leaves == tuned else tuned,
      "lora_dropout": 0.0, "bias": "none", "fan_in_fan_out": False, "use_rslora": False,
      "init_lora_weights": True, "modules_to_save": None, "inference_mode": True,
      "base_model_name_or_path": base_model_name_or_path,
  }
  os.makedirs(path, exist_ok=True)
  save_file(tensors, os.path.join(path, WEIGHTS))
  with open(os.path.join(path, CONFIG), "w") as f:
    json.dump(adapter, f, indent=2, sort_keys=True)
  return adapter


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
