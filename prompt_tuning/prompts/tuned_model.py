"""A backbone folder with a tuned prompt from a file, as `score` and `generate` run it."""
from typing import Optional

import jax.numpy as jnp

from prompt_tuning.errors import UserError
from prompt_tuning.io.backbone import load_backbone
from prompt_tuning.models.inference import InferenceModel
from prompt_tuning.models.t5 import T5
from prompt_tuning.prompts import initializers
from prompt_tuning.prompts.files import read_prompt
from prompt_tuning.prompts.prompt import Prompt


def load_tuned_model(path: str, prompt_file: Optional[str] = None) -> InferenceModel:
  """Loads a backbone folder written by `prompt-tuning convert`, with a prompt in front.

  Args:
    path: the backbone folder.
    prompt_file: a saved prompt (`.npy`, or a PEFT prompt-tuning adapter
      folder or `.safetensors`) prepended to the encoder input, as tuned;
      None for the bare backbone.
  """
  config, params = load_backbone(path)
  if prompt_file is None:
    return InferenceModel(T5(config), params)
  prompt = read_prompt(prompt_file, "--prompt")
  if prompt.ndim != 2 or prompt.shape[1] != config.emb_dim:
    raise UserError(f"--prompt {prompt_file} has shape {prompt.shape}, but backbone {path} has "
                    f"d_model {config.emb_dim}; use a prompt tuned on this backbone")
  model = T5(config, prompt=Prompt(length=prompt.shape[0], initializer=initializers.uniform()))
  return InferenceModel(model, {**params, "prompt": {"prompt": jnp.asarray(prompt)}})
