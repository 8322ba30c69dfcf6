"""The partitioned trainer: frozen backbone, learning, resume, and its failure modes."""
import json
import os
import socket
import subprocess
import sys

import flax.linen as nn
import jax
import numpy as np
import pytest

from prompt_tuning import configurables
from prompt_tuning.io.backbone import load_backbone, save_backbone
from prompt_tuning.train import initialize
from tests.train_helpers import TOY_BINDINGS, TOY_FILES, losses, run_on_eight_devices, toy_train

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def toy_backbone(tmp_path_factory):
  """A random toy backbone saved as a backbone folder (the 'initial checkpoint')."""
  path = str(tmp_path_factory.mktemp("bb") / "backbone")
  configurables.parse(list(TOY_FILES), [*TOY_BINDINGS, "MODEL_DIR = '/unused'"])
  model = initialize.build_model()
  tokens = np.ones((1, 4), np.int32)
  params = nn.meta.unbox(model.init(jax.random.PRNGKey(7), tokens, tokens))["params"]
  params = {k: v for k, v in params.items() if k != "prompt"}
  save_backbone(path, model.config, params)
  return path


def test_frozen_backbone_is_bit_identical_and_prompt_learns(tmp_path, toy_backbone):
  summary = toy_train(tmp_path / "run", steps=30,
                      extra=[f"INITIAL_CHECKPOINT_PATH = '{toy_backbone}'",
                             "train.return_variables = True"])
  _, initial = load_backbone(toy_backbone)
  frozen = summary["frozen"]["params"]
  flat_initial = jax.tree_util.tree_leaves_with_path(initial)
  assert len(flat_initial) == len(jax.tree_util.tree_leaves(frozen))
  for path, want in flat_initial:
    got = frozen
    for key in path:
      got = got[key.key]
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want), err_msg=str(path))
  # The prompt moved away from its exported initial value, and the loss went down.
  exported = np.load(tmp_path / "run" / "prompts" / "step_30.npy")
  trained = np.asarray(summary["trainable"]["prompt"]["prompt"])
  np.testing.assert_allclose(exported, trained, rtol=0, atol=0)
  first, last = losses(summary)[:5], losses(summary)[-5:]
  assert np.mean(last) < np.mean(first) - 0.1, (first, last)


def test_checkpoint_holds_only_trainable_state(tmp_path):
  toy_train(tmp_path / "run", steps=2)
  step_dir = tmp_path / "run" / "checkpoints" / "2"
  meta = json.loads((step_dir / "meta" / "metadata").read_text())
  assert meta["batches_consumed"] == 2
  manifest = (step_dir / "state" / "_METADATA").read_text()
  assert "prompt" in manifest and "encoder" not in manifest and "token_embedder" not in manifest
  assert (tmp_path / "run" / "config.gin").exists()
  operative = (tmp_path / "run" / "config.gin").read_text()
  assert "PROMPT_LENGTH = 4" in operative and "Prompt.length = %PROMPT_LENGTH" in operative
  assert any(f.startswith("events.out.tfevents") for f in os.listdir(tmp_path / "run" / "train"))


@pytest.mark.slow
def test_kill_and_resume_continues_with_the_same_losses(tmp_path):
  straight = losses(toy_train(tmp_path / "straight", steps=8))
  first = losses(toy_train(tmp_path / "resumed", steps=8, extra=["train.stop_after_steps = 4",
                                                                  "CHECKPOINT_PERIOD = 4"]))
  second = losses(toy_train(tmp_path / "resumed", steps=8))
  # The loss record of the first part is kept: the rerun appends to it.
  assert len(first) == 4 and len(second) == 8 and second[:4] == first
  np.testing.assert_allclose(second, straight, rtol=1e-5)


def test_damaged_newest_checkpoint_and_lost_export_resume_from_the_previous_step(tmp_path, capsys):
  run = tmp_path / "run"
  every_2 = ["CHECKPOINT_PERIOD = 2"]
  straight = toy_train(run, steps=4, extra=every_2)
  exported = {n: np.load(run / "prompts" / f"step_{n}.npy") for n in (2, 4)}
  # Step 4's array data is truncated, step 2's prompt export was never written
  # (killed between save and export), and a SIGKILLed run left its lock.
  data = sorted((run / "checkpoints" / "4" / "state" / "d").iterdir())[0]
  data.write_bytes(data.read_bytes()[:10])
  (run / "prompts" / "step_2.npy").unlink()
  dead = subprocess.Popen([sys.executable, "-c", "pass"])
  dead.wait()
  (run / ".lock").write_text(json.dumps({"pid": dead.pid, "hostname": socket.gethostname(),
                                         "start_time": 0, "token": "t"}))
  capsys.readouterr()
  resumed = toy_train(run, steps=4, extra=every_2)
  out = capsys.readouterr().out
  unusable = [l for l in out.splitlines() if "is unusable" in l]
  assert len(unusable) == 1 and f"checkpoint {run}/checkpoints/4 is unusable (" in unusable[0]
  assert "resuming from step 2" in out and "took over the lock" in out
  assert "resumed from" in out and "at step 2" in out
  assert [p.name.split("-")[0] for p in (run / "checkpoints_corrupt").iterdir()] == ["4"]
  assert sorted(os.listdir(run / "checkpoints")) == ["2", "4"]
  assert not (run / ".lock").exists()
  for n in (2, 4):
    np.testing.assert_allclose(np.load(run / "prompts" / f"step_{n}.npy"), exported[n], rtol=1e-6)
  # One record of steps 1..4: 1-2 from the first run, 3-4 recomputed identically.
  assert [h["step"] for h in resumed["train_history"]] == [1, 2, 3, 4]
  np.testing.assert_allclose(losses(resumed), losses(straight), rtol=1e-5)
  # Rerunning a finished run changes nothing and keeps its record.
  again = toy_train(run, steps=4, extra=every_2)
  assert again["train_history"] == resumed["train_history"]
  on_disk = json.loads((run / "train_summary.json").read_text())
  assert [h["step"] for h in on_disk["train_history"]] == [1, 2, 3, 4]


def test_a_second_live_writer_is_refused(tmp_path):
  from prompt_tuning.errors import UserError
  sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
  try:
    (tmp_path / "run").mkdir()
    lock = {"pid": sleeper.pid, "hostname": socket.gethostname(), "start_time": 0, "token": "t"}
    (tmp_path / "run" / ".lock").write_text(json.dumps(lock))
    with pytest.raises(UserError, match=f"in use by another run \\(pid {sleeper.pid} on"):
      toy_train(tmp_path / "run", steps=2)
    assert sorted(os.listdir(tmp_path / "run")) == [".lock"]
    assert json.loads((tmp_path / "run" / ".lock").read_text())["pid"] == sleeper.pid
  finally:
    sleeper.kill()
    sleeper.wait()


_MESH_SCRIPT = r"""
from tests.train_helpers import toy_train, losses
out = {{}}
for shape in ([1, 1], [2, 4], [8, 1]):
  s = toy_train({tmp!r} + "/run_%d_%d" % tuple(shape), steps=4,
                extra=["make_mesh.mesh_shape = %s" % shape, ]
                + (["make_mesh.devices = @first_devices()"] if shape == [1, 1] else []))
  out["%dx%d" % tuple(shape)] = losses(s)
print("RESULT" + json.dumps(out))
"""


@pytest.mark.slow
def test_eight_device_meshes_match_one_device(tmp_path):
  result = run_on_eight_devices(_MESH_SCRIPT.format(tmp=str(tmp_path)))
  np.testing.assert_allclose(result["2x4"], result["1x1"], rtol=2e-5)
  np.testing.assert_allclose(result["8x1"], result["1x1"], rtol=2e-5)


def test_gradient_accumulation_over_microbatches_is_exact(tmp_path):
  # Without dropout: each microbatch folds its own dropout key.
  whole = losses(toy_train(tmp_path / "whole", steps=3, extra=["DROPOUT_RATE = 0.0"]))
  micro = losses(toy_train(tmp_path / "micro", steps=3,
                           extra=["DROPOUT_RATE = 0.0", "train.num_microbatches = 4"]))
  np.testing.assert_allclose(micro, whole, rtol=1e-5)


def test_early_stopping_counts_evaluations_without_improvement():
  from prompt_tuning.errors import UserError
  from prompt_tuning.train.best import EarlyStopping
  early = EarlyStopping("task/accuracy", "max", patience=2)
  assert early.improved({"task/accuracy": 50.0}) and not early.should_stop
  assert not early.improved({"task/accuracy": 40.0}) and not early.should_stop
  assert early.improved({"task/accuracy": 60.0}) and early.bad_evals == 0
  assert not early.improved({"task/accuracy": 60.0})
  assert not early.improved({"task/accuracy": 10.0}) and early.should_stop
  assert early.best == 60.0
  with pytest.raises(UserError, match="task/f1"):
    EarlyStopping("task/f1").improved({"task/accuracy": 1.0})
  # A bare metric name names the one task's metric (as XPROMPT_METRIC does), if unique.
  short = EarlyStopping("accuracy")
  assert short.improved({"task/accuracy": 0.5}) and short.best == 0.5
  with pytest.raises(UserError, match="metric 'accuracy' is not a unique one of the eval metrics"):
    EarlyStopping("accuracy").improved({"a/accuracy": 1.0, "b/accuracy": 1.0})


@pytest.mark.slow
def test_initial_checkpoint_may_be_a_hugging_face_folder(tmp_path):
  from prompt_tuning.io.hf import load_hf
  hf = os.path.join(REPO, "tests", "fixtures", "hf_t5_tiny")
  model = ["T5Config.vocab_size = 128", "T5Config.head_dim = 8", "T5Config.num_heads = 4",
           "T5Config.relative_attention_num_buckets = 32",
           "T5Config.relative_attention_max_distance = 128",
           "sampled_vocab.population_size = 100", "TASK_FEATURE_LENGTHS = {'inputs': 16, 'targets': 8}"]
  # toy_parity's byte ids (digits, 'even', 'odd') all fit the fixture's 128-row vocabulary.
  summary = toy_train(tmp_path / "run", steps=2, extra=[f"INITIAL_CHECKPOINT_PATH = '{hf}'",
                                                         "train.return_variables = True", *model])
  _, original = load_hf(hf)
  frozen = summary["frozen"]["params"]
  for (path, want), got in zip(jax.tree_util.tree_leaves_with_path(original),
                               jax.tree_util.tree_leaves(frozen)):
    np.testing.assert_array_equal(np.asarray(got), want, err_msg=jax.tree_util.keystr(path))


def test_the_best_evaluation_selects_the_exported_prompt_and_trainable(tmp_path, monkeypatch):
  from prompt_tuning.train import evaluation
  scripted = iter([0.5, 0.9, 0.7])
  monkeypatch.setattr(evaluation, "run_evaluation",
                      lambda evaluator, fns, step: {"toy_parity/accuracy": next(scripted)})
  best_of = ["EVAL_PERIOD = 2", "CHECKPOINT_PERIOD = 2", "train.return_variables = True",
             "train.early_stopping_metric = 'toy_parity/accuracy'"]
  # Interrupted after the best evaluation: the resumed run must remember it.
  toy_train(tmp_path / "run", steps=6, extra=[*best_of, "train.stop_after_steps = 4"])
  summary = toy_train(tmp_path / "run", steps=6, extra=best_of)
  assert summary["best_step"] == 4 and summary["best_metric"] == 0.9
  step4 = np.load(tmp_path / "run" / "prompts" / "step_4.npy")
  np.testing.assert_array_equal(np.load(tmp_path / "run" / "prompts" / "best.npy"), step4)
  np.testing.assert_array_equal(summary["best_trainable"]["prompt"]["prompt"], step4)
  assert not np.array_equal(np.asarray(summary["trainable"]["prompt"]["prompt"]), step4)
