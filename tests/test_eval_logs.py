"""T5X's inference_eval/ files, written by the evaluator: stand-in model functions, no model."""
import json
import os

import numpy as np
import pytest
from tensorboard.backend.event_processing import event_accumulator

from prompt_tuning.errors import UserError
from prompt_tuning.run_dir import InferenceEvalDir
from prompt_tuning.train import eval_logs, evaluation
import prompt_tuning.data.toy_tasks  # noqa: F401  pylint: disable=unused-import

LENGTHS = {"inputs": 16, "targets": 8}


def _predict_targets(dataset, model_feature_shapes=None):
  """A perfect model: its prediction of each example is the example's target tokens."""
  del model_feature_shapes
  return [(int(i), ex["decoder_target_tokens"].tolist()) for i, ex in dataset.as_numpy_iterator()]


def _predict_even(dataset, model_feature_shapes=None):
  del model_feature_shapes
  even = [b + 3 for b in b"even"] + [1, 0, 0, 0]  # byte ids are offset by 3; EOS, padding
  return [(int(i), even) for i, _ in dataset.as_numpy_iterator()]


def scalars(log_dir, tag):
  accumulator = event_accumulator.EventAccumulator(str(log_dir))
  accumulator.Reload()
  assert tag in accumulator.Tags()["scalars"], accumulator.Tags()
  return [(e.step, e.value) for e in accumulator.Scalars(tag)]


def check_predictions(path, examples):
  """`path` is T5X's predictions file of `examples` examples: one JSON object per line holding
  the example's features, its postprocessed target and the model's output and prediction."""
  lines = [json.loads(line) for line in open(path, encoding="utf-8")]
  assert len(lines) == examples
  for line in lines:
    assert {"input", "target", "output", "prediction"} <= set(line), line
    assert {"inputs_pretokenized", "targets_pretokenized", "inputs", "targets"} <= set(
        line["input"])
    assert line["target"] == line["input"]["targets_pretokenized"]
  return lines


def test_each_evaluation_writes_predictions_metrics_and_tensorboard_as_t5x(tmp_path):
  log_dir = tmp_path / "inference_eval"
  evaluator = evaluation.make_evaluator("toy_parity", LENGTHS, num_examples=5,
                                        log_dir=str(log_dir))
  for step, predict in ((1_100_002, _predict_targets), (1_100_004, _predict_even)):
    evaluator.evaluate(compute_metrics=True, step=step, predict_fn=predict)
  eval_logs.close_loggers(evaluator)
  folder = InferenceEvalDir(str(log_dir))
  assert sorted(os.listdir(log_dir)) == ["toy_parity", "toy_parity-1100002.jsonl",
                                         "toy_parity-1100004.jsonl", "toy_parity-metrics.jsonl"]
  perfect = check_predictions(folder.predictions("toy_parity", 1_100_002), 5)
  assert all(line["prediction"] == line["target"] for line in perfect)
  evens = check_predictions(folder.predictions("toy_parity", 1_100_004), 5)
  assert all(line["prediction"] == "even" for line in evens)
  share_even = 100 * np.mean([line["target"] == "even" for line in evens])
  # One line appended per evaluation, and the same values in TensorBoard at T5X's tag.
  metrics = [json.loads(line) for line in open(folder.metrics("toy_parity"), encoding="utf-8")]
  assert metrics == [{"step": 1_100_002, "accuracy": 100.0},
                     {"step": 1_100_004, "accuracy": pytest.approx(share_even)}]
  assert scalars(folder.tensorboard("toy_parity"), "eval/accuracy") == [
      (1_100_002, 100.0), (1_100_004, pytest.approx(share_even))]


def test_step_pads_to_six_digits_as_t5x():
  assert InferenceEvalDir("/r").predictions("rte", 40) == "/r/rte-000040.jsonl"


def test_a_failed_write_is_one_error_naming_the_file(tmp_path):
  log_dir = tmp_path / "inference_eval"
  blocked = InferenceEvalDir(str(log_dir)).predictions("toy_parity", 2)
  os.makedirs(blocked)  # a folder where the predictions file goes
  evaluator = evaluation.make_evaluator("toy_parity", LENGTHS, num_examples=2,
                                        log_dir=str(log_dir))
  evaluator.evaluate(compute_metrics=True, step=2, predict_fn=_predict_targets)
  with pytest.raises(UserError) as error:
    eval_logs.raise_failure(evaluator)
  eval_logs.close_loggers(evaluator)
  message = str(error.value)
  assert message.startswith(f"cannot write {blocked} (") and "\n" not in message
  # Nothing else of the evaluation was written: no metric without its predictions.
  assert os.listdir(log_dir) == [os.path.basename(blocked)]


def test_only_the_first_host_writes(tmp_path, monkeypatch):
  monkeypatch.setattr(eval_logs.jax, "process_index", lambda: 1)
  log_dir = tmp_path / "inference_eval"
  evaluator = evaluation.make_evaluator("toy_parity", LENGTHS, num_examples=2,
                                        log_dir=str(log_dir))
  evaluator.evaluate(compute_metrics=True, step=2, predict_fn=_predict_targets)
  eval_logs.close_loggers(evaluator)
  assert not log_dir.exists() or not os.listdir(log_dir)
