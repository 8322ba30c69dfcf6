"""Each paper's preset (configs/papers/) trains through the CLI and sets what it says it sets.

Lester et al. runs as the reference's SST-2 script does (a T5X checkpoint carrying its
step, local SST-2 files, class labels); the other presets run on the toy model with
sizes shrunk by flags, everything else as the preset writes it.
"""
import contextlib
import io
import os
import subprocess

import numpy as np
import pytest

from prompt_tuning import cli
from tests.test_reference_scripts import FINAL_STEP, INITIAL_STEP, PREAMBLE, setup  # pylint: disable=unused-import
from tests.train_helpers import TOY_BINDINGS

PAPERS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs",
                      "papers")
TOY = ("models/t5_1_1_toy_prompt.gin", "runs/prompt_finetune.gin")


def test_every_preset_is_tested():
  """The InfoPrompt presets train in tests/test_infoprompt*.py; the rest below."""
  presets = {f[:-len(".gin")] for f in os.listdir(PAPERS) if f.endswith(".gin")}
  here = {"lester2021", "residual2023", "xprompt2022", "apet2023"}
  assert here <= presets
  assert presets - here == {p for p in presets if p.startswith("infoprompt")}, presets


def _bindings(config_gin: str):
  return {line.split(" = ", 1)[0]: line.split(" = ", 1)[1]
          for line in config_gin.splitlines() if " = " in line and not line.startswith("#")}


@pytest.mark.slow
def test_lester2021_trains_as_the_reference_script_with_the_papers_settings(setup):
  work, env = setup
  model_dir = work / "lester"
  script = PREAMBLE + f"""\
prompt-tuning train \\
  --gin_search_paths="${{T5X_DIR}},${{FLAXFORMER_DIR}},${{PROMPT_DIR}}" \\
  --gin_file="prompt_tuning/configs/models/t5_1_1_tiny_prompt.gin" \\
  --gin_file="prompt_tuning/configs/runs/prompt_finetune.gin" \\
  --gin_file="prompt_tuning/configs/papers/lester2021.gin" \\
  --gin.CLASS_LABELS="['positive', 'negative']" \\
  --gin.MODEL_DIR="'{model_dir}'" \\
  --gin.MIXTURE_OR_TASK_NAME="'taskless_glue_sst2_v200_examples'" \\
  --gin.MIXTURE_OR_TASK_MODULE="'prompt_tuning.data.glue'" \\
  --gin.TASK_FEATURE_LENGTHS="{{'inputs': 32, 'targets': 4}}" \\
  --gin.INITIAL_CHECKPOINT_PATH="'${{PRETRAINED_MODEL}}'" \\
  --gin.TRAIN_STEPS="1_150_000" \\
  --gin.train.early_stopping_metric="'taskless_glue_sst2_v200_examples/accuracy'"
"""
  proc = subprocess.run(["bash", "-c", script], cwd=work, env=env, capture_output=True,
                        text=True, timeout=600)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  bindings = _bindings((model_dir / "config.gin").read_text())
  assert bindings["BATCH_SIZE"] == "32" and bindings["PROMPT_LENGTH"] == "100"
  assert bindings["DROPOUT_RATE"] == "0.1" and bindings["adafactor.learning_rate"] == "0.3"
  assert bindings["Prompt.initializer"] == "@class_labels()"
  assert (model_dir / "prompts" / "best.npy").exists()  # early stopping on the dev set
  assert np.load(model_dir / "prompts" / f"step_{FINAL_STEP}.npy").shape == (100, 4)
  assert f"from step {INITIAL_STEP:,} to {FINAL_STEP:,}" in proc.stdout


def _cli(command, files, bindings):
  out = io.StringIO()
  argv = [command, *[f"--gin_file={f}" for f in files], *[f"--gin.{b}" for b in bindings]]
  with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
    with pytest.raises(SystemExit) as done:
      cli.main(argv)
  assert done.value.code == 0, out.getvalue()[-3000:]
  return out.getvalue()


def _toy(model_dir, *extra):
  return [*TOY_BINDINGS, f"MODEL_DIR = '{model_dir}'", "TRAIN_STEPS = 2", "BATCH_SIZE = 8",
          "TASK_FEATURE_LENGTHS = {'inputs': 16, 'targets': 8}", "EVAL_PERIOD = None", *extra]


@pytest.mark.slow
def test_residual2023_trains_prompt_and_mlp_with_the_official_adamw(tmp_path):
  _cli("train", (*TOY, "papers/residual2023.gin"),
       _toy(tmp_path, "RESIDUAL_BOTTLENECK = 8"))
  bindings = _bindings((tmp_path / "config.gin").read_text())
  assert bindings["train.optimizer"] == "@adamw()" and bindings["adamw.learning_rate"] == "0.3"
  assert bindings["adamw.weight_decay"] == "1e-05" and bindings["PROMPT_LENGTH"] == "10"
  assert bindings["sampled_vocab.population_size"] == "None"
  # One optimizer for prompt and MLP: a single learning rate is logged.
  summary = (tmp_path / "train_summary.json").read_text()
  assert '"learning_rate": 0.3' in summary and "learning_rate/" not in summary
  assert np.load(tmp_path / "prompts" / "step_2.npy").shape == (10, 32)  # P', MLP folded away


@pytest.mark.slow
def test_apet2023_trains_the_budget_without_dropout(tmp_path):
  _cli("train", (*TOY, "papers/apet2023.gin"),
       _toy(tmp_path, "build_model.prompt = None", "APET_BUDGET = 3001", "APET_SEED = 1"))
  bindings = _bindings((tmp_path / "config.gin").read_text())
  assert bindings["DROPOUT_RATE"] == "0.0" and bindings["adamw.learning_rate"] == "0.0001"
  assert bindings["adamw.max_grad_norm"] == "1.0"
  assert (tmp_path / "apet_selection.json").exists()


@pytest.mark.slow
def test_xprompt2022_runs_its_three_stages(tmp_path):
  output = _cli("xprompt", (*TOY, "papers/xprompt2022.gin"),
                _toy(tmp_path, "PROMPT_LENGTH = 4", "XPROMPT_PIECES = 2", "EVAL_PERIOD = 2",
                     "XPROMPT_TOKEN_RATIOS = [0.5]", "XPROMPT_PIECE_RATIOS = [0.5]",
                     "XPROMPT_METRIC = 'accuracy'", "XPROMPT_IMPORTANCE_BATCHES = 2"))
  assert "stage 3" in output.lower() or (tmp_path / "stage3_rewinding").exists()
  bindings = _bindings((tmp_path / "stage1_prompt_tuning" / "config.gin").read_text())
  assert bindings["adafactor.weight_decay_rate"] == "1e-05"
  assert bindings["train.early_stopping_metric"] == "%XPROMPT_METRIC"
