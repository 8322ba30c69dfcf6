"""A backbone with a tuned prompt from a file, as `score` and `generate` run it."""
from typing import Optional

import jax.numpy as jnp

from prompt_tuning.errors import UserError
from prompt_tuning.io.sources import read_backbone
from prompt_tuning.models.inference import InferenceModel
from prompt_tuning.models.t5 import T5
from prompt_tuning.prompts import initializers
from prompt_tuning.prompts.files import read_prompt
from prompt_tuning.prompts.prompt import Prompt


def load_tuned_model(path: str, prompt_file: Optional[str] = None,
                     max_distance: Optional[int] = None) -> InferenceModel:
  """Loads a backbone, with a prompt in front.

  Args:
    path: a backbone folder written by `prompt-tuning convert`, a T5X checkpoint_N
      folder or a Hugging Face T5 1.1 folder (`io.sources`).
    prompt_file: a saved prompt (`.npy`, or a PEFT prompt-tuning adapter
      folder or `.safetensors`) prepended to the encoder input, as tuned;
      None for the bare backbone.
    max_distance: relative_attention_max_distance of a T5X checkpoint (None: 128).
  """
  config, params = read_backbone(path, "--checkpoint", max_distance)
  if prompt_file is None:
    return InferenceModel(T5(config), params)
  prompt = read_prompt(prompt_file, "--prompt")
  if prompt.ndim != 2 or prompt.shape[1] != config.emb_dim:
    raise UserError(f"--prompt {prompt_file} has shape {prompt.shape}, but backbone {path} has "
                    f"d_model {config.emb_dim}; use a prompt tuned on this backbone")
  model = T5(config, prompt=Prompt(length=prompt.shape[0], initializer=initializers.uniform()))
  return InferenceModel(model, {**params, "prompt": {"prompt": jnp.asarray(prompt)}})
