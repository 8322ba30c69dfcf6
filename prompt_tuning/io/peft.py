"""Export tuned prompts and LoRA pairs as Hugging Face PEFT adapters (and read prompts back).

PEFT's prompt tuning of a seq2seq model holds `prompt_embeddings`
`[num_virtual_tokens * num_transformer_submodules, E]`; the first
`num_virtual_tokens` rows are prepended to the encoder's input embeddings, exactly
as the `prefix` placement here does. `num_transformer_submodules=2` (PEFT's default
for SEQ_2_SEQ_LM) adds as many rows again, a *decoder half* that PEFT 0.4 to 0.22
(the versions read: `PeftModelForSeq2SeqLM.forward` and `.generate`, branch
`PeftType.PROMPT_TUNING`) never applies: its forward and generate() prepend
`prompts[:, :num_virtual_tokens]` to the encoder input only, so the decoder half
gets no gradient and keeps its initial values (checked: perturbing it leaves
PEFT's logits unchanged). Only PEFT 0.3.0 prepended it to the decoder input.
Reading such an adapter therefore applies its encoder half, as PEFT does, and
says so once (`DECODER_HALF_NOTE`); `save_peft_prompt` writes either layout, so a
prompt goes back into PEFT's default seq2seq config (`num_transformer_submodules=2`)
with the decoder half it came with (or zeros).

PEFT's LoRA on a `torch.nn.Linear` computes `x Wᵀ + (lora_alpha / r) · x Aᵀ Bᵀ`
with `lora_A.weight` `[r, in]` and `lora_B.weight` `[out, r]`; ours is
`x W + (alpha / r) · x a b` with `a` `[in, r]`, `b` `[r, out]`, so
`lora_A.weight = aᵀ`, `lora_B.weight = bᵀ`, `lora_alpha = alpha`. Module names
are those of `T5ForConditionalGeneration` (`io.hf.hf_name_map`), keys as PEFT
saves them: `base_model.model.encoder.block.0.layer.0.SelfAttention.q.lora_A.weight`.

Layout: `DIR/adapter_model.safetensors` (`prompt_embeddings`, or the LoRA pairs) +
`DIR/adapter_config.json`. `base_model_name_or_path` is written as an absolute
path, so `AutoPeftModelForSeq2SeqLM.from_pretrained(DIR)` finds the backbone from
any working directory. `load_peft_prompts` reads such an adapter (or one trained
in PEFT) back; `PROMPT_FILE` and `--prompt` accept it.
"""
import json
import os
from typing import Dict, Optional, Tuple

import numpy as np

from prompt_tuning.errors import UserError
from prompt_tuning.models.config import T5Config

WEIGHTS = "adapter_model.safetensors"
CONFIG = "adapter_config.json"
# Said once per adapter read with a decoder half: it is not applied, as in PEFT.
DECODER_HALF_NOTE = (
    "note: {what} {path} is a PEFT adapter with num_transformer_submodules=2 (PEFT's seq2seq "
    "default): its first {tokens} rows are the prompt, prepended to the encoder input; its other "
    "{tokens} rows are not applied, as PEFT 0.4 and later never applies them (neither in "
    "forward nor in generate)")


def _absolute(base_model: Optional[str]) -> Optional[str]:
  """A local base-model folder as an absolute path (found from any working directory);
  a hub name or URL unchanged."""
  if base_model and "://" not in base_model and os.path.exists(base_model):
    return os.path.abspath(base_model)
  return base_model


def save_peft_prompt(path: str, prompt: np.ndarray, config: T5Config,
                     base_model_name_or_path: Optional[str] = None,
                     decoder_half: Optional[np.ndarray] = None) -> None:
  """Writes `prompt` `[P, E]` as a PEFT PROMPT_TUNING adapter folder.

  Args:
    decoder_half: None: `num_transformer_submodules=1` (encoder only). Else the `[P, E]`
      rows written after the prompt, with `num_transformer_submodules=2` (PEFT's seq2seq
      default layout); PEFT does not apply them (see the module docstring).
  """
  from safetensors.numpy import save_file
  prompt = np.asarray(prompt, np.float32)
  if prompt.ndim != 2 or prompt.shape[1] != config.emb_dim:
    raise UserError(f"prompt of shape {prompt.shape} does not fit d_model {config.emb_dim}; "
                    "export a prompt tuned on this backbone")
  rows = prompt
  if decoder_half is not None:
    decoder_half = np.asarray(decoder_half, np.float32)
    if decoder_half.shape != prompt.shape:
      raise UserError(f"decoder half of shape {decoder_half.shape} is not the prompt's "
                      f"{prompt.shape}; PEFT's num_transformer_submodules=2 holds two blocks of "
                      "num_virtual_tokens rows")
    rows = np.concatenate([prompt, decoder_half], axis=0)
  if os.path.exists(os.path.join(path, CONFIG)):
    raise UserError(f"{path} already holds a PEFT adapter; choose a new --output folder")
  os.makedirs(path, exist_ok=True)
  save_file({"prompt_embeddings": np.ascontiguousarray(rows)}, os.path.join(path, WEIGHTS))
  adapter = {
      "peft_type": "PROMPT_TUNING", "task_type": "SEQ_2_SEQ_LM",
      "num_virtual_tokens": int(prompt.shape[0]), "token_dim": config.emb_dim,
      "num_transformer_submodules": 1 if decoder_half is None else 2,
      "num_attention_heads": config.num_heads,
      "num_layers": config.num_encoder_layers, "prompt_tuning_init": "RANDOM",
      "inference_mode": True, "base_model_name_or_path": _absolute(base_model_name_or_path),
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


def is_safetensors(path: str) -> bool:
  """Whether `path` is a safetensors file (an 8-byte header size, then a JSON header)."""
  from prompt_tuning import fs
  with fs.open_file(path, "rb") as f:
    head = f.read(9)
  return len(head) == 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") > 1


def load_peft_prompts(path: str) -> Tuple[np.ndarray, Optional[np.ndarray]]:
  """(prompt `[P, E]`, decoder half `[P, E]` or None) of a PEFT PROMPT_TUNING adapter; the
  decoder half is that of `num_transformer_submodules=2`, which PEFT does not apply.

  Args:
    path: the adapter folder (`adapter_config.json` + `adapter_model.safetensors`)
      or its `.safetensors` file (the config beside it is read too).

  Raises:
    UserError: not a PEFT prompt-tuning adapter, pickled weights, or rows that do not
      match the config's `num_virtual_tokens` x `num_transformer_submodules`.
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
  # PEFT itself fills in 2 for SEQ_2_SEQ_LM when the config leaves it out (None).
  default = 2 if adapter.get("task_type") == "SEQ_2_SEQ_LM" else 1
  submodules = int(adapter.get("num_transformer_submodules") or default)
  if submodules not in (1, 2):
    raise UserError(f"{config_path} has num_transformer_submodules={submodules}; PEFT's "
                    "prompt tuning has 1 (encoder) or 2 (encoder and decoder)")
  with fs.open_file(weights, "rb") as f:
    tensors = load_safetensors(f.read())
  if "prompt_embeddings" not in tensors:
    raise UserError(f"{weights} holds {sorted(tensors)}, not PEFT's prompt_embeddings")
  value = np.asarray(tensors["prompt_embeddings"], np.float32)
  if value.ndim != 2 or (tokens and value.shape[0] != tokens * submodules) or (
      value.shape[0] % submodules):
    raise UserError(f"{weights}: prompt_embeddings has shape {value.shape}, but {CONFIG} says "
                    f"{tokens} virtual tokens x {submodules} submodules")
  count = value.shape[0] // submodules
  return value[:count], (value[count:] if submodules == 2 else None)


def load_peft_prompt(path: str) -> np.ndarray:
  """The prompt `[P, E]` of a PEFT PROMPT_TUNING adapter (`load_peft_prompts`): what PEFT
  prepends to the encoder input."""
  return load_peft_prompts(path)[0]
