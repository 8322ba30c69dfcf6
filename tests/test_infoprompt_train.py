"""InfoPrompt on the shared trainer: gin file, loss hook, exactness, what trains, what is exported."""
import os

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from prompt_tuning import configurables
from prompt_tuning.errors import UserError
from prompt_tuning.methods.infoprompt.term import prompt_free_representation
from prompt_tuning.train.run_setup import build_run
from tests.train_helpers import TOY_BINDINGS, TOY_FILES, losses, run_on_eight_devices, toy_train

INFO_FILES = (*TOY_FILES, "methods/infoprompt.gin")
# The toy inputs are short: K - 1 = 7 negatives keeps sampling without repeats. The toy task's
# label words are θ's classes.
INFO = ("INFOPROMPT_NEGATIVES = 8", "CLASS_LABELS = ['even', 'odd']",
        "train.return_variables = True")


def _flat(tree):
  return flax.traverse_util.flatten_dict(flax.core.unfreeze(tree), sep="/")


@pytest.mark.slow
def test_zero_weights_are_plain_prompt_tuning_bit_for_bit(tmp_path):
  plain = toy_train(tmp_path / "plain", steps=4, extra=["train.return_variables = True"])
  off = toy_train(tmp_path / "off", steps=4, files=INFO_FILES,
                  extra=[*INFO, "INFOPROMPT_BETA = 0.0", "INFOPROMPT_GAMMA = 0.0"])
  assert losses(off) == losses(plain)
  np.testing.assert_array_equal(np.asarray(off["trainable"]["prompt"]["prompt"]),
                                np.asarray(plain["trainable"]["prompt"]["prompt"]))
  assert "mi_head" not in off["train_history"][-1]


@pytest.mark.slow
def test_only_prompt_and_info_train_and_both_estimates_are_reported(tmp_path):
  summary = toy_train(tmp_path / "run", steps=6, files=INFO_FILES, extra=list(INFO))
  trained = _flat(summary["trainable"])
  assert {k.split("/")[0] for k in trained} == {"prompt", "info"}
  assert {"info/head_critic/kernel", "info/representation_critic/kernel"} <= set(trained)
  # The backbone is bit-identical to a fresh build of the same run (same seed, no checkpoint).
  configurables.parse(list(INFO_FILES), [*TOY_BINDINGS, *INFO, f"MODEL_DIR = '{tmp_path}/x'"])
  fresh = _flat(build_run(seed=0).variables["params"])
  for key, value in _flat(summary["frozen"]["params"]).items():
    np.testing.assert_array_equal(np.asarray(value), np.asarray(fresh[key]), err_msg=key)
  last = summary["train_history"][-1]
  log_k = np.log(8)
  for name in ("mi_head", "mi_representation"):
    assert np.isfinite(last[name]) and last[name] <= log_k + 1e-5
  assert last["total_loss"] != last["loss"]
  # The exported prompt is the plain [P, E] array; the critics are training-only.
  exported = np.load(tmp_path / "run" / "prompts" / "step_6.npy")
  assert exported.shape == (4, 32)
  np.testing.assert_array_equal(exported, np.asarray(summary["trainable"]["prompt"]["prompt"]))
  # TensorBoard has both estimates, among the train scalars (MODEL_DIR/train/, as T5X).
  train_events = tmp_path / "run" / "train"
  events = [f for f in os.listdir(train_events) if f.startswith("events.out.tfevents")]
  raw = b"".join((train_events / f).read_bytes() for f in events)
  assert b"mi_head" in raw and b"mi_representation" in raw


def test_the_heads_have_their_own_optimizer(tmp_path):
  """methods/infoprompt.gin: the prompt on the run file's Adafactor (lr 0.3), info/ on Adam 1e-3."""
  summary = toy_train(tmp_path / "run", steps=1, files=INFO_FILES, extra=list(INFO))
  configurables.parse(list(INFO_FILES), [*TOY_BINDINGS, *INFO, f"MODEL_DIR = '{tmp_path}/x'"])
  fresh = _flat(build_run(seed=0).variables["params"])
  moved = {k: float(np.abs(np.asarray(v) - np.asarray(fresh[k])).max())
           for k, v in _flat(summary["trainable"]).items()}
  # Adam's first step moves every entry with a gradient by lr * |g| / (|g| + 1e-8) <= lr
  # (plus the float32 rounding of the stored value; f_μ's kernel starts at the identity).
  for path in ("info/head_critic/kernel", "info/representation_critic/kernel",
               "info/gaussian/mean/kernel", "info/gaussian/scale/kernel"):
    rounding = 2 * np.finfo(np.float32).eps * (1 + np.abs(np.asarray(fresh[path])).max())
    assert 0.9e-3 < moved[path] <= 1e-3 + rounding, (path, moved[path])
  assert moved["prompt/prompt"] > 0.05  # Adafactor at 0.3


@pytest.mark.slow
def test_microbatches_give_the_same_losses_and_estimates(tmp_path):
  # Without dropout: each microbatch folds its own dropout key.
  whole = toy_train(tmp_path / "whole", steps=3, files=INFO_FILES,
                    extra=[*INFO, "DROPOUT_RATE = 0.0"])
  micro = toy_train(tmp_path / "micro", steps=3, files=INFO_FILES,
                    extra=[*INFO, "DROPOUT_RATE = 0.0", "train.num_microbatches = 4"])
  for key in ("loss", "total_loss", "mi_head", "mi_representation"):
    np.testing.assert_allclose([h[key] for h in micro["train_history"]],
                               [h[key] for h in whole["train_history"]], rtol=2e-5, atol=2e-6,
                               err_msg=key)


_MESH_SCRIPT = r"""
from tests.train_helpers import TOY_FILES, toy_train
files = (*TOY_FILES, "methods/infoprompt.gin")
out = {{}}
for shape in ([1, 1], [2, 4]):
  s = toy_train({tmp!r} + "/run_%d_%d" % tuple(shape), steps=3, files=files,
                extra=["INFOPROMPT_NEGATIVES = 8", "CLASS_LABELS = ['even', 'odd']",
                       "make_mesh.mesh_shape = %s" % shape]
                + (["make_mesh.devices = @first_devices()"] if shape == [1, 1] else []))
  out["%dx%d" % tuple(shape)] = [[h[k] for k in ("total_loss", "mi_head", "mi_representation")]
                                 for h in s["train_history"]]
print("RESULT" + json.dumps(out))
"""


@pytest.mark.slow
def test_an_eight_device_mesh_samples_what_one_device_does(tmp_path):
  result = run_on_eight_devices(_MESH_SCRIPT.format(tmp=str(tmp_path)))
  np.testing.assert_allclose(result["2x4"], result["1x1"], rtol=2e-5, atol=2e-6)


def test_the_prompt_free_representation_has_no_gradient_to_the_prompt():
  configurables.parse(list(INFO_FILES), [*TOY_BINDINGS, *INFO, "MODEL_DIR = '/unused'"])
  ctx = build_run(seed=0)
  tokens = jnp.asarray(np.random.default_rng(0).integers(3, 300, (2, 8)), jnp.int32)
  batch = {"encoder_input_tokens": tokens, "decoder_input_tokens": tokens[:, :3]}

  def z_prime_sum(prompt):
    params = {**ctx.variables["params"], "prompt": {"prompt": prompt}}
    return prompt_free_representation(ctx.model, {**ctx.variables, "params": params}, batch,
                                      "decoder_first").sum()

  prompt = ctx.variables["params"]["prompt"]["prompt"]
  assert float(z_prime_sum(prompt)) != 0.0
  np.testing.assert_array_equal(np.asarray(jax.grad(z_prime_sum)(prompt)), 0.0)


def test_a_later_file_that_freezes_the_critics_is_refused(tmp_path):
  # runs/prompt_finetune.gin read after the method file rebinds the patterns to prompt/.*.
  with pytest.raises(UserError, match=r"the method's info/ parameters match no trainable"):
    toy_train(tmp_path / "run", steps=1, files=(*INFO_FILES, "runs/prompt_finetune.gin"),
              extra=list(INFO))
  assert not (tmp_path / "run" / "checkpoints").exists()
