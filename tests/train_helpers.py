"""Running the gin-configured trainer in-process on the toy task (tests only)."""
import sys
from typing import Sequence

from prompt_tuning import gin_utils

TOY_BINDINGS = (
    "MIXTURE_OR_TASK_NAME = 'toy_parity'",
    "MIXTURE_OR_TASK_MODULE = 'prompt_tuning.data.toy_tasks'",
    "INITIAL_CHECKPOINT_PATH = None",
    "TASK_FEATURE_LENGTHS = {'inputs': 16, 'targets': 8}",
    "BATCH_SIZE = 8",
    "EVAL_PERIOD = None",
    "train.log_every = 1",
)
TOY_FILES = ("models/t5_1_1_toy_prompt.gin", "runs/prompt_finetune.gin")


def toy_train(model_dir, steps: int, extra: Sequence[str] = (), files: Sequence[str] = TOY_FILES):
  """Trains the toy prompt model; returns the trainer's summary dict."""
  from prompt_tuning.train import trainer
  gin_utils.parse(list(files), [*TOY_BINDINGS, f"MODEL_DIR = '{model_dir}'",
                                f"TRAIN_STEPS = {steps}", f"CHECKPOINT_PERIOD = {steps}", *extra])
  return gin_utils.call(trainer.train)


def losses(summary):
  return [h["loss"] for h in summary["train_history"]]
