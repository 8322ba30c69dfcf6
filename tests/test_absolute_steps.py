"""TRAIN_STEPS means what T5X means: the absolute step, counting the initial checkpoint's step."""
import json
import os

import jax
import numpy as np
import pytest

from prompt_tuning.errors import UserError
from prompt_tuning.io.backbone import save_backbone
from prompt_tuning.io.t5x import read_t5x_step, save_t5x
from prompt_tuning.models.config import T5Config
from prompt_tuning.train.initialize import backbone_shapes, checkpoint_step
from tests.train_helpers import losses, toy_train

TOY = T5Config(vocab_size=384, emb_dim=32, num_heads=2, head_dim=16, mlp_dim=64,
               num_encoder_layers=2, num_decoder_layers=2, relative_attention_num_buckets=8,
               relative_attention_max_distance=32)  # models/t5_1_1_toy_prompt.gin
START = 100


def _random_params(config, seed=0):
  rng = np.random.default_rng(seed)
  return jax.tree_util.tree_map(lambda s: (0.3 * rng.normal(size=s.shape)).astype(np.float32),
                                backbone_shapes(config))


@pytest.fixture(scope="module")
def backbone_at_step(tmp_path_factory):
  """A toy backbone folder converted from a T5X checkpoint at step START."""
  path = str(tmp_path_factory.mktemp("bb") / "backbone")
  save_backbone(path, TOY, _random_params(TOY),
                source={"format": "t5x", "path": "/somewhere/checkpoint_100", "step": START})
  return path


def test_checkpoints_carry_their_step(tmp_path):
  save_t5x(str(tmp_path / "checkpoint_7"), _random_params(TOY), step=7)
  assert read_t5x_step(str(tmp_path / "checkpoint_7")) == 7
  assert checkpoint_step(str(tmp_path / "checkpoint_7")) == 7
  assert checkpoint_step(None) == 0
  # `convert` records the T5X step in the backbone folder; a Hugging Face folder has none.
  from prompt_tuning.cli import main  # pylint: disable=g-import-not-at-top
  with pytest.raises(SystemExit) as done:
    main(["convert", "--from", "t5x", "--input", str(tmp_path / "checkpoint_7"),
          "--output", str(tmp_path / "converted"), "--relative_attention_max_distance", "32"])
  assert done.value.code == 0
  source = json.loads((tmp_path / "converted" / "config.json").read_text())["source"]
  assert source["step"] == 7 and source["format"] == "t5x"
  assert checkpoint_step(str(tmp_path / "converted")) == 7
  hf = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "hf_t5_tiny")
  assert checkpoint_step(hf) == 0


def test_legacy_t5x_backbone_without_a_step_counts_from_zero_with_a_warning(tmp_path, caplog):
  path = str(tmp_path / "old")
  save_backbone(path, TOY, _random_params(TOY), source={"format": "t5x", "path": "/x"})
  assert checkpoint_step(path) == 0
  assert "re-run `prompt-tuning convert`" in caplog.text


@pytest.mark.slow
def test_steps_are_absolute_and_resume_is_exact(tmp_path, backbone_at_step):
  start = [f"INITIAL_CHECKPOINT_PATH = '{backbone_at_step}'", "CHECKPOINT_PERIOD = 2"]
  straight = toy_train(tmp_path / "straight", steps=START + 6, extra=start)
  assert straight["initial_step"] == START and straight["final_step"] == START + 6
  assert [h["step"] for h in straight["train_history"]] == list(range(START + 1, START + 7))
  run = tmp_path / "straight"
  assert sorted(os.listdir(run / "checkpoints")) == ["102", "104", "106"]
  assert sorted(os.listdir(run / "prompts")) == ["step_102.npy", "step_104.npy", "step_106.npy"]
  meta = json.loads((run / "checkpoints" / "106" / "meta" / "metadata").read_text())
  assert (meta["batches_consumed"], meta["initial_step"]) == (6, START)

  # Killed after step 102, rerun: the same losses and prompts as the uninterrupted run.
  first = toy_train(tmp_path / "resumed", steps=START + 6,
                    extra=start + [f"train.stop_after_steps = {START + 2}"])
  assert first["final_step"] == START + 2
  second = toy_train(tmp_path / "resumed", steps=START + 6, extra=start)
  np.testing.assert_allclose(losses(second), losses(straight), rtol=1e-5)
  np.testing.assert_allclose(np.load(tmp_path / "resumed" / "prompts" / "step_106.npy"),
                             np.load(run / "prompts" / "step_106.npy"), rtol=1e-5, atol=1e-7)


def test_train_steps_not_past_the_checkpoint_step_is_one_line(tmp_path, backbone_at_step, capsys):
  with pytest.raises(UserError) as error:
    toy_train(tmp_path / "run", steps=START,
              extra=[f"INITIAL_CHECKPOINT_PATH = '{backbone_at_step}'"])
  message = str(error.value).splitlines()[0]  # gin appends "In call to configurable ..."
  assert "TRAIN_STEPS=100 is not past the initial checkpoint's step 100" in message
  assert "--gin.TRAIN_STEPS=30_100" in message
  assert not (tmp_path / "run").exists()


def test_the_run_says_which_steps_it_trains(tmp_path, backbone_at_step, capsys):
  toy_train(tmp_path / "run", steps=START + 1,
            extra=[f"INITIAL_CHECKPOINT_PATH = '{backbone_at_step}'"])
  assert "from step 100 to 101: 1 step\n" in capsys.readouterr().out
