"""`PACK = True` through the trainer: exact resume from the data position, and one-line refusals."""
import json

import numpy as np
import pytest

from tests.train_helpers import TOY_BINDINGS, TOY_FILES, losses, run_cli, toy_train

PACK = ["PACK = True", "DROPOUT_RATE = 0.0"]


def _meta(run, step):
  return json.loads((run / "checkpoints" / str(step) / "meta" / "metadata").read_text())


@pytest.mark.slow
def test_packed_kill_and_resume_continues_with_the_same_losses(tmp_path):
  straight = toy_train(tmp_path / "straight", steps=3, extra=PACK)
  first = toy_train(tmp_path / "resumed", steps=3, extra=[*PACK, "train.stop_after_steps = 1",
                                                          "CHECKPOINT_PERIOD = 1"])
  second = toy_train(tmp_path / "resumed", steps=3, extra=PACK)
  assert losses(second)[:1] == losses(first)
  np.testing.assert_allclose(losses(second), losses(straight), rtol=1e-5)
  # The data position is the examples consumed: more than BATCH_SIZE (8 rows) per step.
  consumed = _meta(tmp_path / "resumed", 1)["examples_consumed"]
  assert consumed > 8
  assert _meta(tmp_path / "straight", 3)["examples_consumed"] > consumed


def _train_cli(tmp_path, *bindings):
  flags = [f"--gin_file={f}" for f in TOY_FILES]
  flags += [f"--gin.{b.replace(' = ', '=', 1)}" for b in TOY_BINDINGS]
  flags += [f"--gin.MODEL_DIR='{tmp_path / 'run'}'", "--gin.TRAIN_STEPS=2", "--gin.PACK=True",
            *[f"--gin.{b}" for b in bindings]]
  return run_cli(["train", *flags])


@pytest.mark.parametrize("bindings, needle", [
    (["--gin_file=prompts/per_layer.gin"], "per-layer prompts"),
    (["Prompt.placement='suffix'"], "placement"),
    (["train.length_buckets=@LengthBuckets()", "LengthBuckets.inputs=[8,16]"], "length buckets"),
])
def test_what_cannot_pack_refuses_in_one_line(tmp_path, bindings, needle):
  flags = [b[len("--gin_file="):] for b in bindings if b.startswith("--gin_file=")]
  rest = [b for b in bindings if not b.startswith("--gin_file=")]
  code, out = _train_cli(tmp_path, *rest) if not flags else run_cli(
      ["train", *[f"--gin_file={f}" for f in (*TOY_FILES, *flags)],
       *[f"--gin.{b.replace(' = ', '=', 1)}" for b in TOY_BINDINGS],
       f"--gin.MODEL_DIR='{tmp_path / 'run'}'", "--gin.TRAIN_STEPS=2", "--gin.PACK=True"])
  errors = [l for l in out.splitlines() if l.startswith("error:")]
  assert code != 0 and len(errors) == 1, out[-2000:]
  assert needle in errors[0] and "PACK" in errors[0], errors[0]
  assert not (tmp_path / "run" / "checkpoints").exists()


def test_plan_counts_packed_rows():
  from prompt_tuning import configurables
  from prompt_tuning.commands.plan import plan_run
  from tests.test_plan import FILES, SMALL_MODEL
  configurables.parse(FILES, list(SMALL_MODEL))
  plain = plan_run(1)["activations"]
  configurables.parse(FILES, [*SMALL_MODEL, "PACK = True"])
  packed = plan_run(1)["activations"]
  # 8 rows of 5 + 12 positions; the decoder row holds targets of up to 2 segments (17 // 6).
  assert packed["packed"] and not plain["packed"]
  assert packed["batch"] == plain["batch"] == 8
  assert (packed["encoder_length"], packed["decoder_length"]) == (17, 2 * 4)
  assert packed["device_bytes"] > plain["device_bytes"]
  configurables.parse([*FILES, "prompts/per_layer.gin"], [*SMALL_MODEL, "PACK = True"])
  with pytest.raises(Exception, match="PACK = True does not work here: per-layer"):
    plan_run(1)
