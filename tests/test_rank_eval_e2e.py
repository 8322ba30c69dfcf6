"""Rank classification end to end: a gin-driven `prompt-tuning eval` of a `_rank` task."""
import json

import numpy as np
import pytest

from prompt_tuning import configurables, gin_utils
from prompt_tuning.tasks.testing import byte_vocabulary, mock_tfds_rows
from prompt_tuning.train import eval_run

RTE_ROWS = [
    {"premise": "A dog runs in the park.", "hypothesis": "An animal moves.", "label": 0, "idx": 0},
    {"premise": "The sky is green.", "hypothesis": "The sky is blue.", "label": 1, "idx": 1},
    {"premise": "Tom ate an apple.", "hypothesis": "Tom ate fruit.", "label": 0, "idx": 2},
]


def test_eval_of_a_rank_task_scores_every_label_and_writes_metrics(tmp_path):
  np.save(tmp_path / "p.npy", np.zeros((4, 32), np.float32))
  with byte_vocabulary(), mock_tfds_rows({"super_glue/rte": RTE_ROWS}):
    configurables.parse(
        ["models/t5_1_1_toy_prompt.gin", "prompts/from_file.gin", "runs/prompt_eval.gin"],
        ["MIXTURE_OR_TASK_NAME = 'super_glue_rte_rank'", "INITIAL_CHECKPOINT_PATH = None",
         "TASK_FEATURE_LENGTHS = {'inputs': 96, 'targets': 8}", "BATCH_SIZE = 4",
         f"MODEL_DIR = '{tmp_path}'", f"PROMPT_FILE = '{tmp_path}/p.npy'"])
    metrics = gin_utils.call(eval_run.evaluate)
  assert set(metrics) == {"super_glue_rte_rank/accuracy"}
  # Three examples: the accuracy is a multiple of 1/3 (in percent).
  assert min(abs(metrics["super_glue_rte_rank/accuracy"] - k * 100 / 3) for k in range(4)) < 1e-6
  assert json.loads((tmp_path / "eval" / "metrics_validation.json").read_text()) == metrics
  # T5X's prediction file: one line per scored row (each example with each of its labels),
  # with its input features, the postprocessed target and the row's score.
  lines = [json.loads(line) for line in
           open(tmp_path / "eval" / "inference_eval" / "super_glue_rte_rank-000000.jsonl")]
  assert len(lines) == 2 * len(RTE_ROWS)  # RTE's two labels
  for line in lines:
    assert line["input"]["inputs_pretokenized"].startswith("hypothesis: ")
    assert line["target"]["target"] == line["input"]["targets_pretokenized"]
    assert isinstance(line["score"], float) and line["score"] < 0  # a log-likelihood
  # The example's label is the candidate with the highest score, as the accuracy counts it.
  correct = {}
  for line in lines:
    row = (line["score"], line["input"]["is_correct"])
    correct.setdefault(line["input"]["idx"], []).append(row)
  accuracy = 100 * np.mean([max(rows)[1] for rows in correct.values()])
  assert accuracy == pytest.approx(metrics["super_glue_rte_rank/accuracy"])
  metric_lines = [json.loads(line) for line in
                  open(tmp_path / "eval" / "inference_eval" / "super_glue_rte_rank-metrics.jsonl")]
  assert metric_lines == [{"step": 0, "accuracy": pytest.approx(accuracy)}]
