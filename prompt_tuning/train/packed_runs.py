"""A packed training run (`PACK = True`, `data/packing.py`): its settings, which models it
accepts (one refusal line for the rest), its layout and its data position.

Packed rows are exact (per-example losses and gradients of the unpacked batch) when every
position's computation depends only on its own segment. That holds for a prefix prompt and
its reparameterizations (Residual's MLP, XPrompt's masks: they change the `[P, E]` value,
computed once per batch either way) and for the delta insertions of the PET baselines and
APET (per token, or per query for prefix keys/values). It does not hold, or is not built
yet, where a module places or reads positions by their index in the row (`refusal`).

`PACK = 'auto'` (the run file's default) packs on TPU, whose one compiled program otherwise
pays the full padding ('auto' length buckets mean fixed shapes there). On CPU and GPU it
keeps length buckets: end to end on CPU packing measured 1.07x buckets on BoolQ-like lengths
and 1.20x on skewed ones (bench/train_throughput.py; docs/performance.md, "Packing"), not
enough to change what BATCH_SIZE means; GPU is not measured. Where 'auto' would pack a model
that cannot, it does not, and says so in one printed line.
"""
import functools
from typing import Mapping, Optional, Union

import jax

from prompt_tuning.data import bucketing, packing
from prompt_tuning.errors import UserError
from prompt_tuning.train.run_setup import prompt_length
from prompt_tuning.train.step import LossConfig

WAY_OUT = "set PACK = False (--gin.PACK=False)"
AUTO = "auto"
# Backends where PACK = 'auto' packs (see the module docstring).
PACKING_BACKENDS = ("tpu",)


def refusal(model, loss_terms=()) -> Optional[str]:
  """Why `model` (with the method's extra loss terms) cannot train packed, or None."""
  prompt = model.prompt
  if model.extras or loss_terms:
    return "InfoPrompt's loss terms read whole rows as examples (per-example terms and indices)"
  if prompt is None:
    return None
  if hasattr(prompt, "layer"):
    return "per-layer prompts replace positions [0, P) of each row at every layer"
  if hasattr(prompt, "task_prompts"):
    return "a multi-task prompt picks its task from the first token of each row"
  if hasattr(prompt, "generate"):
    return "a prompt generated from the input (InfoPrompt §4.2) encodes whole rows"
  if not hasattr(prompt, "packed"):
    return f"{type(prompt).__name__} has no packed placement"
  if getattr(prompt, "placement", "prefix") != "prefix":
    return f"Prompt.placement = {prompt.placement!r} (packing places prefix prompts)"
  if getattr(prompt, "attention", None) is not None:
    return "Prompt.attention (the prompt's visibility mask) is built for one example per row"
  return None


def check_packable(model, loss_terms=()) -> None:
  """A one-line UserError when `model` cannot train packed (`refusal`)."""
  why = refusal(model, loss_terms)
  if why is not None:
    raise UserError(f"PACK = True does not work here: {why}; {WAY_OUT}")


@functools.lru_cache(maxsize=None)
def _announce(line: str) -> None:
  print(line, flush=True)


def resolve_pack(pack: Union[bool, str], backend: Optional[str] = None) -> bool:
  """PACK as a bool: 'auto' packs on `PACKING_BACKENDS` (default: this process's backend);
  a one-line UserError for anything but True, False and 'auto'."""
  if pack == AUTO:
    backend = backend or jax.default_backend()
    packs = backend in PACKING_BACKENDS
    state = ("on; off: --gin.PACK=False" if packs
             else "off (length buckets); on: --gin.PACK=True")
    _announce(f"packing (PACK='auto', {backend}): {state}")
    return packs
  if not isinstance(pack, bool):
    raise UserError(f"PACK (train.pack) must be True, False or 'auto', got {pack!r}; set e.g. "
                    "--gin.PACK=True")
  return pack


def resolve_for_model(pack: Union[bool, str], model) -> bool:
  """Whether the run packs: `resolve_pack`, except that 'auto' does not pack (and says so)
  a model that cannot (`refusal`); True for such a model is `check_packable`'s error."""
  packs = resolve_pack(pack)
  why = refusal(model, LossConfig().extra_terms) if packs and pack == AUTO else None
  if why is not None:
    _announce(f"packing (PACK='auto'): off, since {why}")
    return False
  if packs:
    check_packable(model, LossConfig().extra_terms)
  return packs


def check_pack(pack, pack_targets_length, length_buckets):
  """`length_buckets` as the run uses them: None when packing (rows have fixed shapes; the
  default 'auto' buckets mean that), else unchanged. One-line UserErrors for a PACK that is
  not True, False or 'auto' and for settings packing would ignore."""
  pack = resolve_pack(pack)
  if not pack:
    if pack_targets_length is not None:
      raise UserError(f"PACK_TARGETS_LENGTH={pack_targets_length!r} is ignored without packing; "
                      "set --gin.PACK=True or PACK_TARGETS_LENGTH = None")
    return length_buckets
  if isinstance(length_buckets, bucketing.LengthBuckets):
    if (length_buckets.inputs != bucketing.AUTO or length_buckets.targets is not None
        or length_buckets.window != 1):
      raise UserError(f"PACK = True packs rows of fixed shape, so length buckets "
                      f"(BUCKETS={length_buckets.inputs!r}, TARGET_BUCKETS="
                      f"{length_buckets.targets!r}, BUCKET_WINDOW={length_buckets.window}) would "
                      "be ignored; drop runs/length_buckets.gin and those settings, or "
                      f"{WAY_OUT}")
  return None


def layout(model, task_feature_lengths: Mapping[str, int],
           targets_length: Optional[int]) -> packing.PackedLayout:
  """The packed rows of `model` (checked: `check_packable`) for `TASK_FEATURE_LENGTHS`."""
  check_packable(model, LossConfig().extra_terms)
  return packing.layout_for(task_feature_lengths, prompt_length(model), targets_length)


def data_position(state, model_dir: str) -> int:
  """Examples the run consumed before `state` (0 for a fresh run); a UserError for a
  checkpoint written without packing, whose data position counts batches."""
  if not state.resumed:
    return 0
  if state.examples_consumed is None:
    raise UserError(f"{model_dir} was trained without PACK up to step {state.step:,}: its data "
                    "position counts batches, not packed examples; resume it with PACK = False, "
                    "or start a new MODEL_DIR")
  return state.examples_consumed
