"""Every gin file of the reference code resolves, path for path: to a file of this package that
builds the same thing, or to one line naming what to use instead."""
import os
import re

import gin
import jax
import numpy as np
import pytest

from prompt_tuning import configurables, gin_utils, reference_configs
from prompt_tuning.errors import UserError
from prompt_tuning.models.config import T5Config, T5_1_1_SIZES, t5_1_1_config
from prompt_tuning.prompts import initializers
from prompt_tuning.train.initialize import build_model

REFERENCE = [f"prompt_tuning/{p}" for p in reference_configs.REFERENCE_GIN_FILES]
ALIASED = [p for p in REFERENCE if reference_configs.replacement(p) is None]
REPLACED = [p for p in REFERENCE if reference_configs.replacement(p) is not None]


def _config(*gin_files, bindings=()) -> T5Config:
  configurables.parse(list(gin_files), list(bindings))
  return build_model().config


def test_every_reference_file_has_a_file_here_or_a_replacement_but_not_both():
  assert len(REFERENCE) == 60 and len(set(REFERENCE)) == 60
  for name in REFERENCE:
    has_file = gin_utils.package_config_path(name) is not None
    assert has_file != (reference_configs.replacement(name) is not None), name
  assert set(reference_configs.REPLACED) <= set(reference_configs.REFERENCE_GIN_FILES)


DIMENSIONS = {"NUM_HEADS", "NUM_ENCODER_LAYERS", "NUM_DECODER_LAYERS", "HEAD_DIM", "EMBED_DIM",
              "MLP_DIM"}
# What a user passes (as to the reference's files): a size file after a size-less model, and
# these macros.
USER_MACROS = {"MODEL_DIR": "'/tmp/run'", "MIXTURE_OR_TASK_NAME": "'toy_parity'",
               "INITIAL_CHECKPOINT_PATH": "None", "PROMPT_FILE": "'/tmp/p.npy'",
               "EMBEDDING_FILE": "'/tmp/e.npy'", "CLASS_LABELS": "['yes', 'no']"}


@pytest.mark.parametrize("name", ALIASED)
def test_each_aliased_reference_file_parses(name):
  try:
    configurables.parse([name], [])
    return
  except UserError as e:
    required = re.match(r"required gin macro\(s\) not set: ([\w, ]+);", str(e))
    assert required, e
  missing = set(required.group(1).split(", "))
  assert missing <= DIMENSIONS | set(USER_MACROS), missing
  files = [name] + (["prompt_tuning/configs/models/sizes/base.gin"] if missing & DIMENSIONS else [])
  configurables.parse(files, [f"{m} = {USER_MACROS[m]}" for m in sorted(missing - DIMENSIONS)])


@pytest.mark.parametrize("name", REPLACED)
def test_each_replaced_reference_file_is_one_line_naming_what_to_use(name, tmp_path):
  with pytest.raises(UserError) as refused:
    configurables.parse([name], [])
  message = str(refused.value)
  assert "\n" not in message and name in message
  # Every gin file the line names (not a pattern) is a file of this package.
  named = [f for f in re.findall(r"[\w/<>*]+\.gin", message.split(": ", 1)[1])
           if "<" not in f and "*" not in f]
  assert named or "not implemented" in message
  for f in named:
    assert os.path.isfile(os.path.join(gin_utils.package_configs_dir(), f)), (name, f)
  # ... also when a user's gin file includes it.
  mine = tmp_path / "mine.gin"
  mine.write_text(f"include '{name}'\n")
  with pytest.raises(UserError) as included:
    configurables.parse([str(mine)], [])
  assert name in str(included.value)


@pytest.mark.parametrize("size", sorted(T5_1_1_SIZES))
def test_reference_sizes_build_the_published_t5_1_1_and_mt5_models(size):
  ours = _config(f"models/t5_1_1_{size}_prompt.gin")
  assert _config("prompt_tuning/configs/models/t5_1_1_prompt.gin",
                 f"prompt_tuning/configs/models/sizes/{size}.gin") == ours == t5_1_1_config(size)
  mt5 = _config(f"prompt_tuning/configs/models/mt5_{size}_prompt.gin")
  assert mt5 == ours.replace(vocab_size=250112)
  assert gin.query_parameter("get_vocabulary.path").endswith(
      "mc4.250000.100extra/sentencepiece.model")


def test_mt5_sizes_beyond_t5_1_1_and_a_missing_size():
  big = _config("prompt_tuning/configs/models/mt5_80b_prompt.gin")
  assert (big.emb_dim, big.num_heads, big.mlp_dim, big.num_encoder_layers) == (8192, 256, 65536, 16)
  with pytest.raises(UserError, match="EMBED_DIM"):  # no sizes/*.gin after the size-less file
    _config("prompt_tuning/configs/models/t5_1_1_prompt.gin")


def test_reference_test_models_are_the_tiny_models_here():
  tiny = _config("prompt_tuning/configs/test/t5_1_1_tiny_prompt.gin")
  assert tiny == _config("models/t5_1_1_tiny_prompt.gin")
  assert gin.query_parameter("%PROMPT_LENGTH") == 100
  assert _config("prompt_tuning/configs/test/t5_1_1_tiny.gin") == tiny
  configurables.parse(["prompt_tuning/configs/test/train_t5_1_1_tiny.gin"], [])
  assert gin.query_parameter("trainable_patterns.patterns") == [".*"]  # every weight trains
  assert gin.query_parameter("%INITIAL_CHECKPOINT_PATH") is None
  with pytest.raises(UserError, match="INITIAL_CHECKPOINT_PATH"):  # "load": from a checkpoint
    configurables.parse(["prompt_tuning/configs/test/load_t5_1_1_tiny_prompt.gin"], [])
  configurables.parse(["prompt_tuning/configs/test/load_t5_1_1_tiny_prompt.gin"],
                      ["INITIAL_CHECKPOINT_PATH = '/tmp/checkpoint_1'"])
  assert gin.query_parameter("trainable_patterns.patterns") == ["prompt/.*"]
  assert (gin.query_parameter("%BATCH_SIZE"), gin.query_parameter("%TRAIN_STEPS"),
          gin.query_parameter("%CHECKPOINT_PERIOD")) == (8, 3, 2)


def test_extended_reference_models_select_the_extended_prompts():
  configurables.parse(["prompt_tuning/configs/extended/models/multi_task_t5_1_1_base_prompt.gin"], [])
  assert gin.query_parameter("MultiTaskPrompt.task_token_base") == 32099
  assert gin.query_parameter("%MULTITASK_TOKENS_IN_DATA") is True
  configurables.parse(["prompt_tuning/configs/extended/models/t5_1_1_per_layer_prompt.gin",
                       "prompt_tuning/configs/models/sizes/small.gin"], [])
  assert gin.query_parameter("%PROMPT_LENGTH") == 10
  assert gin.query_parameter("%PER_LAYER_MODE") == "replace"
  configurables.parse(["prompt_tuning/configs/extended/models/ia3_t5_1_1.gin",
                       "prompt_tuning/configs/models/sizes/small.gin",
                       "prompt_tuning/configs/extended/runs/ia3_finetune.gin"],
                      [f"{m} = {USER_MACROS[m]}" for m in
                       ("MODEL_DIR", "MIXTURE_OR_TASK_NAME", "INITIAL_CHECKPOINT_PATH")])
  assert gin.query_parameter("trainable_patterns.patterns") == [".*/ia3/scale"]
  assert gin.query_parameter("adafactor.learning_rate") == 3e-3
  configurables.parse(["prompt_tuning/configs/models/decoding/beam_search.gin"], [])
  assert (gin.query_parameter("EvalModelFns.beam_size"),
          gin.query_parameter("EvalModelFns.alpha")) == (4, 0.6)


def test_numpy_initializers_read_the_embedding_file_not_the_backbone(tmp_path):
  file_table = np.arange(40 * 6, dtype=np.float32).reshape(40, 6)  # rows unlike the model's
  model_table = -np.ones((50, 6), np.float32)
  np.save(tmp_path / "emb.npy", file_table)
  configurables.parse(["prompt_tuning/configs/prompts/from_sampled_vocab_numpy.gin"],
                      [f"EMBEDDING_FILE = '{tmp_path / 'emb.npy'}'"])
  init = initializers.embeddings_from_file()
  prompt = np.asarray(init(jax.random.PRNGKey(0), (5, 6), model_table))
  assert all(any((row == r).all() for r in file_table) for row in prompt), prompt
  np.save(tmp_path / "narrow.npy", file_table[:, :4])
  wrong = initializers.embeddings_from_file(str(tmp_path / "narrow.npy"),
                                            initializers.sampled_vocab())
  with pytest.raises(UserError, match=r"narrow.npy has shape \(40, 4\).*EMBEDDING_FILE"):
    wrong(jax.random.PRNGKey(0), (5, 6), model_table)
  missing = initializers.embeddings_from_file(str(tmp_path / "none.npy"), initializers.sampled_vocab())
  with pytest.raises(UserError, match="none.npy does not exist"):
    missing(jax.random.PRNGKey(0), (5, 6), model_table)
