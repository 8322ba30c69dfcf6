"""The reference code's gin files (google-research/prompt-tuning), path for path.

Every gin file of the reference repository either has a file of the same path in this
package's `configs/` (an alias that includes our equivalent and sets the reference's macros),
or is in `REPLACED`, whose one-line message names what to use instead. `gin_utils` reads a
`prompt_tuning/...` name through this table when no file of the package has that path, so
`--gin_file=prompt_tuning/configs/architectures/...` fails in one line, not in gin's traceback.
"""
from typing import Dict, Optional, Tuple

# Paths below the reference's `prompt_tuning/` folder, as its scripts and includes name them.
REFERENCE_GIN_FILES: Tuple[str, ...] = (
    "configs/architectures/prompt_encoder_t5_1_1_flaxformer.gin",
    "configs/architectures/t5_1_1_flaxformer.gin",
    "configs/extended/architectures/ia3_t5_1_1_flaxformer.gin",
    "configs/extended/architectures/multi_task_prompt_encoder_t5_1_1_flaxformer.gin",
    "configs/extended/architectures/per_layer_prompt_encoder_t5_1_1_flaxformer.gin",
    "configs/extended/models/ia3_t5_1_1.gin",
    "configs/extended/models/mt5_per_layer_prompt.gin",
    "configs/extended/models/multi_task_t5_1_1_base_prompt.gin",
    "configs/extended/models/multi_task_t5_1_1_large_prompt.gin",
    "configs/extended/models/multi_task_t5_1_1_prompt.gin",
    "configs/extended/models/multi_task_t5_1_1_small_prompt.gin",
    "configs/extended/models/multi_task_t5_1_1_xl_prompt.gin",
    "configs/extended/models/multi_task_t5_1_1_xxl_prompt.gin",
    "configs/extended/models/t5_1_1_per_layer_prompt.gin",
    "configs/extended/models/wayward_t5_1_1_base_prompt.gin",
    "configs/extended/models/wayward_t5_1_1_large_prompt.gin",
    "configs/extended/models/wayward_t5_1_1_prompt.gin",
    "configs/extended/runs/ia3_finetune.gin",
    "configs/extended/runs/multitask_prompt_finetune.gin",
    "configs/extended/test/load_multi_task_t5_1_1_tiny_prompt.gin",
    "configs/extended/test/multi_task_t5_1_1_tiny_prompt.gin",
    "configs/extended/test/train_multi_task_t5_1_1_tiny_prompt.gin",
    "configs/models/decoding/beam_search.gin",
    "configs/models/decoding/nucleus_sampling.gin",
    "configs/models/mt5_150b_prompt.gin",
    "configs/models/mt5_80b_prompt.gin",
    "configs/models/mt5_base_prompt.gin",
    "configs/models/mt5_large_prompt.gin",
    "configs/models/mt5_prompt.gin",
    "configs/models/mt5_small_prompt.gin",
    "configs/models/mt5_xl_prompt.gin",
    "configs/models/mt5_xxl_prompt.gin",
    "configs/models/sizes/150b.gin",
    "configs/models/sizes/80b.gin",
    "configs/models/sizes/base.gin",
    "configs/models/sizes/large.gin",
    "configs/models/sizes/small.gin",
    "configs/models/sizes/xl.gin",
    "configs/models/sizes/xxl.gin",
    "configs/models/t5_1_1_base_prompt.gin",
    "configs/models/t5_1_1_large_prompt.gin",
    "configs/models/t5_1_1_prompt.gin",
    "configs/models/t5_1_1_small_prompt.gin",
    "configs/models/t5_1_1_xl_prompt.gin",
    "configs/models/t5_1_1_xxl_prompt.gin",
    "configs/prompts/from_class_labels.gin",
    "configs/prompts/from_class_labels_numpy.gin",
    "configs/prompts/from_file.gin",
    "configs/prompts/from_sampled_vocab.gin",
    "configs/prompts/from_sampled_vocab_numpy.gin",
    "configs/runs/prompt_eval.gin",
    "configs/runs/prompt_finetune.gin",
    "configs/runs/prompt_infer.gin",
    "configs/test/load_t5_1_1_tiny_prompt.gin",
    "configs/test/t5_1_1_tiny.gin",
    "configs/test/t5_1_1_tiny_prompt.gin",
    "configs/test/train_t5_1_1_tiny.gin",
    "configs/test/train_t5_1_1_tiny_prompt.gin",
    "extended/perceptron/configs/models/cross_entropy_t5_1_1_prompt.gin",
    "extended/perceptron/configs/models/perceptron_t5_1_1_prompt.gin",
)

_BUILT_IN = "flaxformer architectures are built into this package's model"
_WAYWARD = ("Wayward prompts (the reference's extended/wayward: a prompt kept near a task "
            "description's embeddings) are not implemented here; the nearest is a prompt "
            "initialized from words, prompts/from_class_labels.gin")
_PERCEPTRON = ("the reference's perceptron/cross-entropy rank-loss models (extended/perceptron) "
               "are not implemented here; train with the usual seq2seq loss and evaluate by rank "
               "classification of the labels (runs/prompt_eval.gin scores each label)")

# Reference files with no file here: what to use instead (one line each).
REPLACED: Dict[str, str] = {
    "configs/architectures/prompt_encoder_t5_1_1_flaxformer.gin":
        f"{_BUILT_IN}; use models/t5_1_1_prompt.gin with a models/sizes/*.gin, or "
        "models/t5_1_1_<size>_prompt.gin",
    "configs/architectures/t5_1_1_flaxformer.gin":
        f"{_BUILT_IN}; use models/t5_1_1_dimensions.gin with a models/sizes/*.gin, or "
        "models/t5_1_1_<size>.gin",
    "configs/extended/architectures/ia3_t5_1_1_flaxformer.gin":
        f"{_BUILT_IN}; use extended/models/ia3_t5_1_1.gin (methods/ia3.gin on any model file)",
    "configs/extended/architectures/multi_task_prompt_encoder_t5_1_1_flaxformer.gin":
        f"{_BUILT_IN}; use extended/models/multi_task_t5_1_1_prompt.gin (prompts/multitask.gin "
        "after any prompt model file)",
    "configs/extended/architectures/per_layer_prompt_encoder_t5_1_1_flaxformer.gin":
        f"{_BUILT_IN}; use extended/models/t5_1_1_per_layer_prompt.gin (prompts/per_layer.gin "
        "after any prompt model file)",
    "configs/extended/models/wayward_t5_1_1_prompt.gin": _WAYWARD,
    "configs/extended/models/wayward_t5_1_1_base_prompt.gin": _WAYWARD,
    "configs/extended/models/wayward_t5_1_1_large_prompt.gin": _WAYWARD,
    "configs/models/decoding/nucleus_sampling.gin":
        "nucleus (top-p) sampling is not implemented here; eval and infer decode greedily or "
        "with models/decoding/beam_search.gin, and `prompt-tuning generate --temperature 1.0 "
        "--topk K` samples from the top K tokens",
    "extended/perceptron/configs/models/cross_entropy_t5_1_1_prompt.gin": _PERCEPTRON,
    "extended/perceptron/configs/models/perceptron_t5_1_1_prompt.gin": _PERCEPTRON,
}

PACKAGE_PREFIX = "prompt_tuning/"


def reference_path(name: str) -> Optional[str]:
  """The part of `name` after `prompt_tuning/` (at its start or after a `/`), or None."""
  normalized = name.replace("\\", "/")
  at = normalized.rfind(PACKAGE_PREFIX)
  while at > 0 and normalized[at - 1] != "/":
    at = normalized.rfind(PACKAGE_PREFIX, 0, at)
  return None if at < 0 else normalized[at + len(PACKAGE_PREFIX):]


def replacement(name: str) -> Optional[str]:
  """The one-line way out for a reference gin file that has no file here, or None."""
  path = reference_path(name)
  return None if path is None else REPLACED.get(path)
