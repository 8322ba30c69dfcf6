"""TensorBoard scalars that TensorBoard's Scalars dashboard reads, at the right steps."""
import logging

import numpy as np
import pytest
from tensorboard.backend.event_processing import event_accumulator

from prompt_tuning.train import summaries


def test_writer_writes_standard_scalars(tmp_path):
  writer = summaries.Writer(str(tmp_path))
  writer.scalars(1_100_010, {"train/loss": 2.5, "eval/task/accuracy": 0.75})
  writer.scalars(1_100_020, {"train/loss": 1.5})
  writer.close()
  accumulator = event_accumulator.EventAccumulator(str(tmp_path))
  accumulator.Reload()
  assert sorted(accumulator.Tags()["scalars"]) == ["eval/task/accuracy", "train/loss"]
  assert [(e.step, e.value) for e in accumulator.Scalars("train/loss")] == [
      (1_100_010, 2.5), (1_100_020, 1.5)]
  assert [(e.step, e.value) for e in accumulator.Scalars("eval/task/accuracy")] == [
      (1_100_010, 0.75)]


def test_train_scalars_have_t5x_tags_and_meanings():
  logged = {"loss": 2.0, "z_loss": 0.5, "accuracy": 0.25, "target_tokens": 10.0,
            "learning_rate": 0.3, "grad_norm": 1.5}
  # T5X's loss and z-loss are sums over the step's target tokens (LOSS_NORMALIZING_FACTOR =
  # None, as in the reference); the per-token mean has T5X's name for it; ours keep their names.
  assert summaries.train_scalars(logged, steps_per_second=4.0, batch_size=8) == {
      "loss": 20.0, "loss_per_nonpadding_target_token": 2.0, "z_loss": 5.0,
      "cross_ent_loss": 15.0, "accuracy": 0.25, "target_tokens": 10.0, "learning_rate": 0.3,
      "grad_norm": 1.5, "timing/steps_per_second": 4.0, "timing/seqs_per_second": 32.0,
      "timing/examples_per_second": 32.0}


def test_timing_counts_packed_examples_and_the_shapes_that_compiled(tmp_path, monkeypatch):
  from prompt_tuning.run_dir import RunDir  # pylint: disable=g-import-not-at-top
  now = [100.0]
  monkeypatch.setattr(summaries.time, "time", lambda: now[0])
  monkeypatch.setattr(summaries, "write_operative_config", lambda run: None)
  log = summaries.TrainLog(RunDir(str(tmp_path)), 0, 10, resumed=False, batch_size=2)
  # Packed rows: 2 a step, holding 5, then 3, 4 and 6 examples; the third batch has a new
  # shape. Steps 1-3 take 1 s each, logged every step; steps 4 and 5 are logged together
  # after 4 s, with an unlogged step between (a batch of the first shape again).
  batches = [((2, 10), 5), ((2, 10), 3), ((2, 12), 4), ((2, 10), 6), ((2, 12), 2)]
  for step, (shape, examples) in enumerate(batches, start=1):
    log.count_batch({"encoder_input_tokens": np.zeros(shape)}, examples)
    now[0] += 1.0 if step <= 3 else 2.0
    if step != 4:
      log.train(step, {"loss": 1.0})
  log.close()
  events = event_accumulator.EventAccumulator(str(tmp_path / "train"))
  events.Reload()
  def scalars(tag):
    return [(e.step, e.value) for e in events.Scalars(tag)]
  assert scalars("timing/examples_per_second") == [(1, 5.0), (2, 3.0), (3, 4.0), (5, 2.0)]
  assert scalars("timing/seqs_per_second") == [(1, 2.0), (2, 2.0), (3, 2.0), (5, 1.0)]
  assert scalars("timing/compiled_programs") == [(1, 1.0), (2, 1.0), (3, 2.0), (5, 2.0)]


def test_eval_step_comes_from_the_prompt_file_or_the_checkpoint(tmp_path):
  from prompt_tuning.models.config import T5Config  # pylint: disable=g-import-not-at-top
  from prompt_tuning.models.t5 import T5  # pylint: disable=g-import-not-at-top
  from prompt_tuning.prompts import initializers  # pylint: disable=g-import-not-at-top
  from prompt_tuning.prompts.ensemble import PromptEnsemble  # pylint: disable=g-import-not-at-top
  from prompt_tuning.prompts.prompt import Prompt  # pylint: disable=g-import-not-at-top
  from prompt_tuning.train.eval_run import evaluated_step  # pylint: disable=g-import-not-at-top
  config = T5Config(vocab_size=32, emb_dim=4, num_heads=1, head_dim=4, mlp_dim=4,
                    num_encoder_layers=1, num_decoder_layers=1)

  def model(path):
    return T5(config, prompt=Prompt(length=2, initializer=initializers.from_file(path)))

  assert evaluated_step(model("/run/prompts/step_1150000.npy"), None) == 1_150_000
  assert evaluated_step(model("/pretrained_prompts/sst2.npy"), None) == 0
  ensemble = T5(config, prompt=PromptEnsemble(prompt_files=("/a/step_7.npy", "/b/step_7.npy")))
  assert evaluated_step(ensemble, None) == 7
  mixed = T5(config, prompt=PromptEnsemble(prompt_files=("/a/step_7.npy", "/b/step_8.npy")))
  assert evaluated_step(mixed, None) == 0


def test_seqio_empty_logger_warning_is_quiet(caplog):
  import seqio  # pylint: disable=g-import-not-at-top
  from prompt_tuning.train import evaluation  # pylint: disable=g-import-not-at-top
  import prompt_tuning.data.toy_tasks  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
  del seqio
  with caplog.at_level(logging.WARNING):
    evaluation.make_evaluator("toy_parity", {"inputs": 16, "targets": 8})
  assert "logger_cls" not in caplog.text
