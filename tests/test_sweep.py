"""`prompt-tuning sweep`: budgets to method settings, thresholds, bad budgets, resuming."""
import json
import os

import flax.linen as nn
import jax
import numpy as np
import pytest

from prompt_tuning import gin_utils
from prompt_tuning.cli import main
from prompt_tuning.errors import UserError
from prompt_tuning.methods.apet import sweep
from prompt_tuning.methods.apet.counts import count_parameters
from prompt_tuning.models.config import T5Config
from prompt_tuning.run_dir import SweepDir

DEMO = T5Config(vocab_size=264, emb_dim=64, num_heads=4, head_dim=16, mlp_dim=128,
                num_encoder_layers=2, num_decoder_layers=2, relative_attention_num_buckets=16,
                relative_attention_max_distance=32)


def test_budgets_map_to_each_methods_knob():
  cells, skipped = sweep.plan_cells(sweep.METHODS, [100, 1000, 10_000], DEMO, [0, 1], 150)
  by_name = {c.name: c for c in cells}
  assert dict(by_name["prompt_b1000"].setting) == {"tokens": 16}
  assert by_name["prompt_b1000"].parameters == 16 * 64
  assert dict(by_name["lora_b10000"].setting) == {"rank": 10}
  assert by_name["lora_b10000"].parameters == count_parameters("lora", DEMO, rank=10) == 10_240
  assert "LORA_ALPHA = 20.0" in by_name["lora_b10000"].bindings  # alpha / rank = 2
  assert by_name["adapter_b10000"].parameters == count_parameters("adapter", DEMO, bottleneck=9)
  assert {c.parameters for c in cells if c.method == "apet" and c.budget == 100} == {100}
  assert {c.seed for c in cells if c.method == "apet"} == {0, 1}
  reasons = {(s["method"], s["budget"]): s["reason"] for s in skipped}
  assert reasons[("lora", 100)] == "below rank 1 (1,024 parameters)"
  assert reasons[("prompt", 10_000)].startswith("156 prompt tokens exceed the longest prompt, 150")
  assert ("apet", 100) not in reasons


@pytest.mark.parametrize("budget", [0, -5, 2.5, float("nan"), "1000", True, 10**9])
def test_bad_budgets_are_one_line_errors(budget):
  with pytest.raises(UserError) as e:
    sweep.check_budgets([1000, budget], DEMO)
  assert "\n" not in str(e.value) and "SWEEP_BUDGETS" in str(e.value)
  assert f"{count_parameters('full_finetune', DEMO):,}" in str(e.value)


def test_bad_budget_on_the_command_line_fails_before_any_work(tmp_path, capsys):
  with pytest.raises(SystemExit) as done:
    main(["sweep", f"--gin.MODEL_DIR='{tmp_path}/s'", "--gin.SWEEP_BUDGETS=[100, 0]"])
  assert done.value.code == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and err[0].startswith("error: sweep budget 0 is not a whole number")
  assert not (tmp_path / "s").exists()


def test_thresholds_and_spread():
  rows = [{"method": m, "budget": b, "parameters": b, "metric": v}
          for m, values in {"a": (0.0, 0.5, 0.95), "b": (0.3, 0.6, 0.9)}.items()
          for b, v in zip((10, 100, 1000), values)]
  rows += [{"method": "apet", "budget": 100, "parameters": 100, "metric": v} for v in (0.4, 0.6)]
  out = sweep.summarize(rows, chance=0.0, full=0.955, n_examples=256)
  assert out["low_threshold"] == {"a": 100, "b": 10, "apet": 100}
  assert out["high_threshold"] == {"a": 1000, "b": None, "apet": None}
  assert out["low_threshold_all_methods"] == 100
  apet = out["points"]["apet"][0]
  assert (apet["mean"], apet["runs"]) == (0.5, 2) and abs(apet["sd"] - 0.1414) < 1e-3
  assert out["spread_by_budget"]["10"] == 0.3 and abs(out["spread_by_budget"]["100"] - 0.1) < 1e-9
  assert out["mean_spread_below_low_threshold"] == 0.3


@pytest.fixture(scope="module")
def tiny_backbone(tmp_path_factory):
  from prompt_tuning.io.backbone import save_backbone
  from prompt_tuning.models.t5 import T5
  config = DEMO.replace(emb_dim=16, num_heads=2, head_dim=8, mlp_dim=32, num_encoder_layers=1,
                        num_decoder_layers=1)
  tokens = np.ones((1, 4), np.int32)
  params = nn.meta.unbox(T5(config).init(jax.random.PRNGKey(0), tokens, tokens))["params"]
  path = str(tmp_path_factory.mktemp("sweep") / "backbone")
  save_backbone(path, config, params)
  return path


@pytest.mark.slow
def test_a_finished_cell_is_not_recomputed(tmp_path, tiny_backbone, monkeypatch, capsys):
  from prompt_tuning.train import trainer
  out = tmp_path / "sweep"
  flags = [f"--gin.MODEL_DIR='{out}'", f"--gin.INITIAL_CHECKPOINT_PATH='{tiny_backbone}'",
           "--gin.SWEEP_BUDGETS=[100]", "--gin.SWEEP_METHODS=['apet']", "--gin.TRAIN_STEPS=2",
           "--gin.BATCH_SIZE=8", "--gin.run_sweep.apet_seeds=[0, 1]",
           "--gin.run_sweep.full_finetune=False", "--gin.run_sweep.eval_num_examples=8"]
  with pytest.raises(SystemExit) as done:
    main(["sweep", *flags])
  assert done.value.code == 0
  first = json.loads((out / "sweep.json").read_text())
  assert [(c["method"], c["budget"], c["seed"], c["parameters"]) for c in first["cells"]] == [
      ("apet", 100, 0, 100), ("apet", 100, 1, 100)]
  assert (out / "sweep.png").stat().st_size > 1000
  assert (out / "cells" / "apet_b100_s1" / "apet_selection.json").exists()
  log = capsys.readouterr().out
  assert "[2/2] apet_b100_s1 (budget 100, seed 1; 100 trainable): training" in log
  assert "ETA" in log
  # A rerun trains nothing: both cells have their done-marker.
  os.unlink(SweepDir(out).cell("apet_b100_s1").done)
  trained = []
  real_train = trainer.train
  monkeypatch.setattr(trainer, "train", lambda **kw: trained.append(1) or real_train(**kw))
  with pytest.raises(SystemExit) as done:
    main(["sweep", *flags])
  assert done.value.code == 0 and len(trained) == 1  # only the cell without its marker
  log = capsys.readouterr().out
  assert "[1/2] apet_b100_s0 (budget 100, seed 0; 100 trainable): done before" in log
  second = json.loads((out / "sweep.json").read_text())
  assert [c["metric"] for c in second["cells"]] == [c["metric"] for c in first["cells"]]


def test_the_sweep_runs_without_dropout_as_apets_official_code():
  """APET's commands fine-tune with dropout 0.0 (docs/reference.md); the sweep's cells
  append that binding after the run files' T5X 0.1."""
  import gin
  from prompt_tuning import configurables
  configurables.parse(["runs/sweep.gin"], [])
  assert "DROPOUT_RATE = 0.0" in gin.query_parameter("run_sweep.extra_bindings")
