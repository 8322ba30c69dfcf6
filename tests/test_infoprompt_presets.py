"""The InfoPrompt presets under configs/papers/ train through `prompt-tuning train`."""
import flax
import numpy as np
import pytest

from prompt_tuning import configurables
from prompt_tuning.train.exports import read_export
from prompt_tuning.train.run_setup import build_run
from tests.train_helpers import TOY_BINDINGS, TOY_FILES, run_cli

STEPS = 2
LABELS = "CLASS_LABELS = ['even', 'odd']"
# (preset, settings it must give, AdamW's learning rate and weight decay)
PRESETS = [
    ("papers/infoprompt2023.gin",
     {"GeneratedPrompt.length": 4, "GeneratedPrompt.rank": 64, "beta": 0.1, "gamma": 0.05,
      "num_negatives": 32, "critic": "bilinear"}, 1e-3, 0.0),
    ("papers/infoprompt2023_released_code.gin",
     {"GeneratedPrompt.length": 1, "GeneratedPrompt.rank": 32, "beta": 0.2, "gamma": 0.1,
      "num_negatives": 33, "critic": "dot"}, 1e-3, 0.01),
]


@pytest.mark.slow
@pytest.mark.parametrize("preset, settings, learning_rate, weight_decay", PRESETS)
def test_the_preset_trains_through_the_cli(tmp_path, preset, settings, learning_rate,
                                           weight_decay):
  run = tmp_path / "run"
  bindings = [*TOY_BINDINGS, f"MODEL_DIR = '{run}'", f"TRAIN_STEPS = {STEPS}",
              f"CHECKPOINT_PERIOD = {STEPS}", LABELS]
  files = (*TOY_FILES, preset)
  code, out = run_cli(["train", *[f"--gin_file={f}" for f in files],
                       *[f"--gin.{b}" for b in bindings]])
  assert code == 0, out[-3000:]

  # What ran: the preset's prompt and loss settings ...
  configurables.parse(list(files), [*bindings, "MODEL_DIR = '/unused'"])
  ctx = build_run(seed=0)
  from prompt_tuning.methods.infoprompt.loss import InfoPromptConfig
  config = InfoPromptConfig()
  for name, value in settings.items():
    got = (getattr(ctx.model.prompt, name.split(".")[1]) if "." in name
           else getattr(config, name))
    assert got == value, name
  assert config.theta == "class_mean"
  # ... and its optimizer: AdamW at 1e-3 for every trainable parameter, generator included.
  # Adam's step is at most lr * 1.0014 per entry in its first two steps (bias-corrected
  # moments), plus the decay lr * wd * |p|; prompt tuning's Adafactor at 0.3 moves entries by
  # ~0.3. info/ moves only through the MI terms' gradients.
  exported, _ = read_export(str(run / "exports" / f"step_{STEPS}"))
  start = flax.traverse_util.flatten_dict(flax.core.unfreeze(ctx.variables), sep="/")
  assert {k.split("/")[1] for k in exported} == {"prompt", "info"}
  for path, value in exported.items():
    before = np.asarray(start[path])
    moved = np.abs(np.asarray(value) - before).max()
    bound = STEPS * learning_rate * (1.002 + weight_decay * (np.abs(before).max() + 1e-2))
    assert 0 < moved <= bound, (path, moved, bound)
