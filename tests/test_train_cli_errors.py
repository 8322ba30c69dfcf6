"""User errors of `prompt-tuning train`: one line, non-zero exit, no checkpoint left behind."""
import os

import numpy as np
import pytest

from tests.train_helpers import TOY_BINDINGS, TOY_FILES, cli_process


def run_train(model_dir, *extra_flags):
  flags = [f"--gin_file={f}" for f in TOY_FILES]
  flags += [f"--gin.{b.replace(' = ', '=', 1)}" for b in TOY_BINDINGS]
  flags += [f"--gin.MODEL_DIR='{model_dir}'", "--gin.TRAIN_STEPS=2", *extra_flags]
  return cli_process(["train", *flags])


def assert_one_line_error(proc, model_dir, *needles):
  assert proc.returncode != 0
  errors = [l for l in proc.stderr.splitlines() if l.startswith("error:")]
  assert len(errors) == 1, proc.stderr[-2000:]
  for needle in needles:
    assert needle in errors[0], errors[0]
  assert "Traceback" not in proc.stderr
  assert not os.path.exists(os.path.join(model_dir, "checkpoints"))


def test_unknown_configurable_in_a_gin_file(tmp_path):
  bad = tmp_path / "bad.gin"
  bad.write_text("no_such_thing.value = 3\n")
  proc = run_train(tmp_path / "run", f"--gin_file={bad}")
  assert_one_line_error(proc, tmp_path / "run", "no_such_thing", "bad.gin")


def test_unregistered_task_lists_close_names(tmp_path):
  proc = run_train(tmp_path / "run", "--gin.MIXTURE_OR_TASK_NAME='toy_parit'")
  assert_one_line_error(proc, tmp_path / "run", "toy_parit", "Did you mean: toy_parity")


def test_checkpoint_of_the_wrong_size(tmp_path, shared_data):
  ckpt = shared_data / "t5x_t5_1_1_tiny" / "checkpoint_3"  # d_model 4, the toy model has 32
  # TRAIN_STEPS past the checkpoint's step 3 (absolute steps, as in T5X).
  proc = run_train(tmp_path / "run", f"--gin.INITIAL_CHECKPOINT_PATH='{ckpt}'",
                   "--gin.TRAIN_STEPS=5")
  assert_one_line_error(proc, tmp_path / "run", "decoder/decoder_norm/scale", "checkpoint has (4,)",
                        "model expects (32,)")


@pytest.mark.slow
def test_a_prompt_longer_than_the_inputs_is_added_on_top_of_them(tmp_path):
  """As in the reference code: TASK_FEATURE_LENGTHS counts the inputs, the prompt comes on top."""
  proc = run_train(tmp_path / "run", "--gin.PROMPT_LENGTH=40")
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert np.load(tmp_path / "run" / "prompts" / "step_2.npy").shape == (40, 32)


def test_empty_dataset(tmp_path):
  proc = run_train(tmp_path / "run", "--gin.MIXTURE_OR_TASK_NAME='toy_empty'")
  assert_one_line_error(proc, tmp_path / "run", "toy_empty", "no full batch", "BATCH_SIZE")


def test_divergence_stops_before_any_checkpoint(tmp_path):
  # A prompt of values near float32's largest: its norm overflows at the first step.
  proc = run_train(tmp_path / "run", "--gin_file=prompts/from_uniform.gin",
                   "--gin.uniform.scale=1e38")
  assert_one_line_error(proc, tmp_path / "run", "training diverged", "became inf at step 1",
                        "no checkpoint")


def one_error_line(proc):
  assert proc.returncode != 0
  errors = [l for l in proc.stderr.splitlines() if l.startswith("error:")]
  assert len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
  return errors[0]


@pytest.mark.slow
def test_a_rerun_that_changes_results_is_refused(tmp_path):
  run = tmp_path / "run"
  assert run_train(run).returncode == 0
  steps = sorted(os.listdir(run / "checkpoints"))
  error = one_error_line(run_train(run, "--gin.PROMPT_LENGTH=6"))
  assert "Prompt.length (via %PROMPT_LENGTH) was 4, now 6" in error
  assert str(run / "config.gin") in error and "--gin.train.allow_config_change=True" in error
  error = one_error_line(run_train(run, "--gin.train.optimizer=@adamw()"))
  assert "train.optimizer was @adafactor(), now @adamw()" in error
  # With the override the config passes, but checkpoints of a 4-token prompt
  # cannot become a 6-token one: an error, and nothing is set aside.
  error = one_error_line(run_train(run, "--gin.PROMPT_LENGTH=6",
                                   "--gin.train.allow_config_change=True"))
  assert "does not fit this model" in error and "prompt/prompt" in error
  assert sorted(os.listdir(run / "checkpoints")) == steps
  assert not os.path.exists(run / "checkpoints_corrupt") and not os.path.exists(run / ".lock")


def test_a_step_that_does_not_fit_the_device_stops_before_the_checkpoint_is_read(tmp_path,
                                                                                 shared_data):
  """With the device memory known, XLA's memory of the compiled step is checked first: the
  checkpoint here is the wrong size, so reading it would be a different error."""
  ckpt = shared_data / "t5x_t5_1_1_tiny" / "checkpoint_3"
  proc = run_train(tmp_path / "run", f"--gin.INITIAL_CHECKPOINT_PATH='{ckpt}'",
                   "--gin.TRAIN_STEPS=5", "--gin.train.device_memory_gib=0.00001")
  assert_one_line_error(proc, tmp_path / "run", "by XLA with NUM_MICROBATCHES=1",
                        "more than the 10.49 KiB of one device", "NUM_MICROBATCHES='auto'")
