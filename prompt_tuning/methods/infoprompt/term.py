"""InfoPrompt on the shared train step: its heads on the model, its loss term on the step.

The gin file (`configs/methods/infoprompt.gin`) binds

    build_model.extras = {'info': @infoprompt_heads()}     # parameters under info/
    LossConfig.extra_terms = @infoprompt_loss_terms()      # () when beta = gamma = 0

so the step adds `-β·I(P; Z | X) - γ·I(P; θ | X)` per example (Eq. 11) and
reports both estimates as `mi_representation` and `mi_head`. With the default
`theta='class_mean'` neither estimate reads the batch's targets: θ comes from
the task's label words (`CLASS_LABELS`), tokenized once with the task's own
targets vocabulary.
"""
import functools
import importlib
from typing import Any, Callable, Dict, Mapping, Optional, Sequence, Tuple, Union

import flax.linen as nn
import gin
import jax
import jax.numpy as jnp
import numpy as np
import seqio

from prompt_tuning.errors import UserError
from prompt_tuning.methods.infoprompt.loss import (InfoPromptConfig, extra_loss, is_active,
                                                   make_heads, mutual_information)
from prompt_tuning.methods.infoprompt.representations import (class_label_tokens,
                                                              select_representation, theta_vectors)

Array = jax.Array
HEADS_NAME = "info"


@gin.configurable
def infoprompt_heads(config: InfoPromptConfig = None) -> Callable[[], nn.Module]:
  """The factory of the `info` module (`build_model.extras`), for one `InfoPromptConfig`."""
  return functools.partial(make_heads, config or InfoPromptConfig())


def prompt_free_representation(model: nn.Module, variables: Any, batch: Mapping[str, Array],
                               z_source: str) -> Array:
  """Z′ `[B, E]`: the same representation as Z from a pass without the prompt, no gradient.

  The encoder reads the bare inputs and the decoder only its first position;
  dropout is off, as the prompt-free pass is a fixed reference.
  """
  bare = model.clone(prompt=None, extras=())
  first = batch["decoder_input_tokens"][:, :1]
  _, sown = bare.apply(variables, batch["encoder_input_tokens"], first, mutable=["intermediates"])
  features = {k: v[0] for k, v in sown["intermediates"].items()}
  return jax.lax.stop_gradient(select_representation(
      z_source, features["decoder_hidden"], features["encoded"], features["encoder_valid"]))


def class_tokens_of_task(config: InfoPromptConfig, mixture_or_task_name: Optional[str],
                         mixture_or_task_module: Union[str, Sequence[str], None]) -> np.ndarray:
  """`[C, T]` token ids of `config.class_labels` in the task's targets vocabulary."""
  if not config.class_labels:
    raise UserError("InfoPromptConfig.theta='class_mean' (the paper's label-free θ) needs the "
                    "task's label words: set CLASS_LABELS, e.g. --gin.CLASS_LABELS=\"['entailment', "
                    "'not_entailment']\" (or InfoPromptConfig.theta='gold_label', supervised, not "
                    "the paper's)")
  if mixture_or_task_name is None:
    raise UserError("InfoPrompt's class-mean θ tokenizes CLASS_LABELS with the task's vocabulary; "
                    "bind infoprompt_loss_terms.mixture_or_task_name = %MIXTURE_OR_TASK_NAME "
                    "(methods/infoprompt.gin does)")
  modules = ([mixture_or_task_module] if isinstance(mixture_or_task_module, str)
             else mixture_or_task_module or ())
  for module in modules:  # registers the task (the trainer has imported them already)
    importlib.import_module(module)
  vocabulary = seqio.get_mixture_or_task(mixture_or_task_name).output_features["targets"].vocabulary
  return class_label_tokens(config.class_labels, vocabulary)


@gin.configurable
def infoprompt_loss_terms(config: InfoPromptConfig = None, mixture_or_task_name: str = None,
                          mixture_or_task_module: Union[str, Sequence[str], None] = None
                          ) -> Tuple[Callable, ...]:
  """`LossConfig.extra_terms` of InfoPrompt: one term, or none when β = γ = 0.

  Args:
    config: the settings (default: `InfoPromptConfig()`, i.e. its gin bindings).
    mixture_or_task_name: the run's task, whose targets vocabulary tokenizes
      `config.class_labels` (`theta='class_mean'`).
    mixture_or_task_module: modules that register it.
  """
  config = config or InfoPromptConfig()
  if not is_active(config):
    return ()
  class_tokens = None
  if config.gamma and config.theta == "class_mean":
    class_tokens = class_tokens_of_task(config, mixture_or_task_name, mixture_or_task_module)

  def term(model, variables, batch, features, rng) -> Tuple[Array, Dict[str, Array]]:
    if "example_index" not in batch:
      raise UserError("InfoPrompt needs the batch's global example indices (example_index); "
                      "train with `prompt-tuning train`, which adds them")
    if HEADS_NAME not in variables["params"]:
      raise UserError("InfoPrompt's loss is configured but the model has no info/ parameters; "
                      "add --gin_file=methods/infoprompt.gin (it binds build_model.extras)")
    bare = model.apply(variables, batch["encoder_input_tokens"], method=type(model).input_features)
    if "prompt" not in bare:
      raise UserError("InfoPrompt needs a prompt module; use a *_prompt.gin model file")
    z = select_representation(config.z_source, features["decoder_hidden"], features["encoded"],
                              features["encoder_valid"])
    z_prime = (prompt_free_representation(model, variables, batch, config.z_source)
               if config.beta else None)
    theta = None
    if config.gamma:
      # Only the supervised option reads the targets.
      targets = batch["decoder_target_tokens"] if config.theta == "gold_label" else None
      theta = theta_vectors(config.theta, variables["params"]["decoder"]["logits_dense"]["kernel"],
                            z.shape[0], config.label_pieces, class_tokens, targets)
    estimates = mutual_information(
        config, variables["params"][HEADS_NAME], prompt=bare["prompt"], z=z, z_prime=z_prime,
        input_embeddings=bare["input_embeddings"], input_valid=bare["input_valid"], theta=theta,
        example_ids=batch["example_index"].astype(jnp.int32), key=rng)
    return extra_loss(estimates, config), estimates

  return (term,)
