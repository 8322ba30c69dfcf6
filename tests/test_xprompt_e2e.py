"""`prompt-tuning xprompt` end to end on the toy backbone and task: stages, report, restarts."""
import json
import os

import numpy as np
import pytest

from prompt_tuning.methods.xprompt import driver as xprompt_driver
from prompt_tuning.run_dir import XPromptDir
from tests.train_helpers import TOY_BINDINGS, run_cli

PIECES = 2  # divides the toy model's d_model 32
TOKEN_RATIOS = [0.25, 0.5]
PIECE_RATIOS = [0.5]
STEPS = 3


def _argv(model_dir, files=("models/t5_1_1_toy_prompt.gin", "methods/xprompt.gin",
                            "runs/prompt_finetune.gin")):
  bindings = [*TOY_BINDINGS, f"MODEL_DIR = '{model_dir}'", f"TRAIN_STEPS = {STEPS}",
              f"CHECKPOINT_PERIOD = {STEPS}", "PROMPT_LENGTH = 4", f"XPROMPT_PIECES = {PIECES}",
              f"run_xprompt.token_ratios = {TOKEN_RATIOS}",
              f"run_xprompt.piece_ratios = {PIECE_RATIOS}", "run_xprompt.importance_batches = 2",
              "run_xprompt.metric_name = 'accuracy'",
              # Ties prune (the default needs a strict improvement, which a 3-step toy
              # prompt never shows), so the pruning checks below are not vacuous.
              "run_xprompt.tolerance = 0.0", "run_xprompt.test_split = 'test'"]
  return ["xprompt", *[f"--gin_file={f}" for f in files], *[f"--gin.{b}" for b in bindings]]


def _file_times(root):
  return {os.path.join(d, f): os.stat(os.path.join(d, f)).st_mtime_ns
          for d, _, files in os.walk(root) for f in files}


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
  """A run interrupted after stage 2 (Ctrl-C while stage 3 sets up), then run again."""
  model_dir = str(tmp_path_factory.mktemp("xprompt") / "run")
  rewinding_edit = xprompt_driver.rewinding_edit

  def interrupted_while_rewinding(*args):
    edit = rewinding_edit(*args)

    def edit_then_interrupt(variables):
      edit(variables)
      raise KeyboardInterrupt

    return edit_then_interrupt

  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(xprompt_driver, "rewinding_edit", interrupted_while_rewinding)
    code, first = run_cli(_argv(model_dir))
  assert code == 130, first
  code, second = run_cli(_argv(model_dir))
  assert code == 0, second
  with open(XPromptDir(model_dir).summary) as f:
    summary = json.load(f)
  with open(summary["report"]) as f:
    report = json.load(f)
  return model_dir, (first, second), summary, report


def _kept(report):
  return np.asarray(report["token_mask"])[:, None] * np.asarray(report["piece_mask"])


@pytest.mark.slow
def test_stages_run_in_order_and_a_restart_resumes_after_the_last_finished_one(finished_run):
  model_dir, (first, second), summary, _ = finished_run
  starts = [first.index(f"=== xprompt stage {i}/3") for i in (1, 2, 3)]
  assert starts == sorted(starts)
  assert "stage 1/3: prompt tuning finished earlier" in second
  assert "stage 2/3: pruning search finished earlier" in second
  assert "=== xprompt stage 3/3" in second and "=== xprompt stage 1/3" not in second
  folder = XPromptDir(model_dir)
  for stage in (folder.stage1, folder.search, folder.stage3):
    assert os.path.exists(stage.stage_record)
  assert os.listdir(folder.stage1.checkpoints)
  assert os.listdir(folder.stage3.checkpoints)
  assert summary["final_step"] == 2 * STEPS
  assert set(summary["stages"]) == {"prompt_tuning", "pruning", "rewinding"}
  assert summary["metric_name"] == "toy_parity/accuracy"


def test_report_records_scores_masks_and_every_candidate(finished_run):
  _, _, summary, report = finished_run
  assert np.asarray(report["token_scores"]).shape == (4,)
  assert np.asarray(report["piece_scores"]).shape == (4, PIECES)
  assert np.asarray(report["token_mask"]).shape == (4,)
  assert np.asarray(report["piece_mask"]).shape == (4, PIECES)
  assert set(np.unique(_kept(report))) <= {0, 1}
  levels = [(c["level"], c["ratio"]) for c in report["candidates"]]
  assert levels == [("none", 0.0), *[("token", r) for r in TOKEN_RATIOS],
                    *[("piece", r) for r in PIECE_RATIOS]]
  assert set(report["stages"]) == {"prompt_tuning", "pruning", "rewinding"}
  assert report["stages"] == summary["stages"]
  # The chosen sub-prompt is the best candidate, ties going to the later (smaller) one.
  metrics = [c["metric"] for c in report["candidates"]]
  best = max(metrics)
  assert report["chosen"]["metric"] == best
  assert report["stages"]["pruning"] == best
  assert report["stages"]["prompt_tuning"] == metrics[0]
  assert summary["kept_parameters"] == int(_kept(report).sum()) * (32 // PIECES)
  assert summary["trainable_parameters"] == summary["kept_parameters"]  # the headline count
  assert summary["prompt_parameters"] == 4 * 32
  # Held-out numbers of every stage, from a split that chose nothing.
  assert set(summary["held_out_stages"]) == {"prompt_tuning", "pruning", "rewinding"}
  assert report["held_out_stages"] == summary["held_out_stages"]
  assert "cannot be below" in summary["note"]
  with open(summary["heatmap"], "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_exported_prompt_is_zero_exactly_where_pruned(finished_run):
  _, _, summary, report = finished_run
  kept = np.repeat(_kept(report), 32 // PIECES, axis=1) > 0
  # A 3-step toy prompt decodes no label at all, so every candidate ties and, with
  # tolerance 0, the smallest wins: something is pruned and the check is not vacuous.
  assert not kept.all()
  prompt = np.load(summary["final_prompt"])
  assert prompt.shape == (4, 32)
  np.testing.assert_array_equal(prompt[~kept], 0.0)
  assert np.all(prompt[kept] != 0.0)


def test_rewinding_retrains_kept_values_and_pruned_stay_zero(finished_run):
  model_dir, _, summary, report = finished_run
  kept = np.repeat(_kept(report), 32 // PIECES, axis=1) > 0
  folder = XPromptDir(model_dir)
  stage1 = xprompt_driver.load_tree(folder.stage1.kept_trainable)["prompt"]["prompt"]
  stage3 = xprompt_driver.load_tree(folder.stage3.kept_trainable)["prompt"]["prompt"]
  np.testing.assert_array_equal(stage3[~kept], 0.0)  # the raw parameter, not only the masked view
  assert not np.allclose(stage3[kept], stage1[kept])  # stage 3 trained the rewound values
  np.testing.assert_array_equal(np.load(summary["final_prompt"]), stage3 * kept)
  # Stage 1 was plain prompt tuning: its exported prompt is the raw one, nothing masked.
  exported = np.load(folder.stage1.prompt(f"step_{STEPS}"))
  np.testing.assert_array_equal(exported, stage1)


def test_rerun_of_a_finished_run_skips_every_stage(finished_run):
  model_dir, _, summary, _ = finished_run
  before = _file_times(model_dir)
  code, output = run_cli(_argv(model_dir))
  assert code == 0, output
  assert "skipping" in output
  assert "stage 1/3" not in output and "trainable parameters" not in output
  assert _file_times(model_dir) == before


def test_missing_xprompt_gin_fails_before_training(tmp_path):
  model_dir = tmp_path / "run"
  code, output = run_cli(_argv(model_dir, files=("models/t5_1_1_toy_prompt.gin",
                                                  "runs/prompt_finetune.gin")))
  assert code == 2
  assert "methods/xprompt.gin" in output
  assert not model_dir.exists()
