"""Adafactor as T5X computes it: the global step, factored moments, clipping, weight decay.

The reference is written here in numpy from T5X's published update rule
(`t5x/adafactor.py`; Shazeer & Stern 2018), not from our code: at global step t

    decay = 1 - (t - step_offset + 1) ** -0.8
    factored (two dims >= 128): row/column means of g^2 + 1e-30 decayed with it,
        y = g * (v_row / mean(v_row)) ** -0.5 (x) v_col ** -0.5
    unfactored: v = decay * v + (1 - decay) * (g^2 + 1e-30), y = g / sqrt(v)
    y /= max(1, rms(y) / clipping_threshold)
    p = (1 - weight_decay) * p - lr * y          (weight decay not scaled by lr)
"""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from prompt_tuning.errors import UserError
from prompt_tuning.train import optim
from tests.test_absolute_steps import TOY, _random_params
from tests.train_helpers import toy_train

LR, WD, STEPS = 0.3, 1e-5, 50
SHAPES = {"factored": (130, 200), "prompt": (100, 48), "vector": (40,)}


def _t5x_adafactor(params, grads_per_step, start_step, step_offset=0, lr=LR, wd=WD,
                   decay_rate=0.8, clipping=1.0, min_dim_size_to_factor=128,
                   decay_dtype=np.float32):
  """T5X's Adafactor (no momentum, no parameter scaling) in float64 numpy; the decay in
  `decay_dtype` (T5X: float32, `jnp.array(i, jnp.float32) + 1.0`)."""
  params = {k: v.astype(np.float64) for k, v in params.items()}
  state = {}
  for k, p in params.items():
    dims = np.argsort(p.shape)
    if p.ndim >= 2 and p.shape[dims[-2]] >= min_dim_size_to_factor:
      second, largest = int(dims[-2]), int(dims[-1])
      state[k] = ("factored", second, largest,
                  np.zeros(np.delete(p.shape, largest)), np.zeros(np.delete(p.shape, second)))
    else:
      state[k] = ("full", np.zeros(p.shape))
  for i, grads in enumerate(grads_per_step):
    t = start_step + i
    f = decay_dtype
    decay = float(f(1) - (f(t - step_offset) + f(1)) ** f(-decay_rate))
    for k, p in params.items():
      g = grads[k].astype(np.float64)
      g2 = g * g + 1e-30
      if state[k][0] == "factored":
        _, second, largest, v_row, v_col = state[k]
        v_row = decay * v_row + (1 - decay) * g2.mean(axis=largest)
        v_col = decay * v_col + (1 - decay) * g2.mean(axis=second)
        state[k] = ("factored", second, largest, v_row, v_col)
        row = (v_row / v_row.mean()) ** -0.5
        y = g * np.expand_dims(row, largest) * np.expand_dims(v_col ** -0.5, second)
      else:
        v = decay * state[k][1] + (1 - decay) * g2
        state[k] = ("full", v)
        y = g / np.sqrt(v)
      y = y / max(1.0, np.sqrt(np.mean(y * y)) / clipping)
      params[k] = (1 - wd) * p - lr * y
  return params


def _ours(params, grads_per_step, start_step, dtype=np.float32, **kwargs):
  tx = optim.adafactor(learning_rate=LR, weight_decay_rate=WD, **kwargs)
  params = {k: jnp.asarray(v, dtype) for k, v in params.items()}
  state = optim.start_at_step(tx.init(params), start_step)
  update = jax.jit(tx.update)
  for grads in grads_per_step:
    updates, state = update({k: jnp.asarray(v, dtype) for k, v in grads.items()}, state, params)
    params = jax.tree_util.tree_map(lambda p, u: p + u, params, updates)
  return {k: np.asarray(v) for k, v in params.items()}


@pytest.fixture(scope="module")
def problem():
  rng = np.random.default_rng(0)
  params = {k: rng.uniform(-0.5, 0.5, s).astype(np.float32) for k, s in SHAPES.items()}
  # Gradients of changing scale per coordinate, so the second moments matter.
  scales = {k: np.exp(rng.normal(size=s)).astype(np.float32) for k, s in SHAPES.items()}
  grads = [{k: (scales[k] * rng.normal(size=s) * (1 + i % 7)).astype(np.float32)
            for k, s in SHAPES.items()} for i in range(STEPS)]
  return params, grads


@pytest.mark.parametrize("start_step,step_offset", [(0, 0), (1_100_000, 0), (0, -1_100_000),
                                                    (1_100_000, 1_099_990)])
def test_fifty_updates_match_t5x_formulas(problem, start_step, step_offset):
  """In float64 the formulas agree to 1e-6 after 50 updates; in float32 (how runs train)
  to float32's rounding, accumulated over 50 updates of parameters of size ~1-20."""
  params, grads = problem
  with jax.enable_x64(True):  # optax's decay then comes out in float64 too
    exact = _ours(params, grads, start_step, dtype=np.float64, step_offset=step_offset)
  rounded = _ours(params, grads, start_step, step_offset=step_offset)
  expected = _t5x_adafactor(params, grads, start_step, step_offset, decay_dtype=np.float64)
  for k in SHAPES:
    np.testing.assert_allclose(exact[k], expected[k], rtol=0, atol=1e-6, err_msg=k)
  expected = _t5x_adafactor(params, grads, start_step, step_offset)
  for k in SHAPES:
    np.testing.assert_allclose(rounded[k], expected[k], rtol=1e-5, atol=2e-5, err_msg=k)
    assert not np.allclose(exact[k], params[k], atol=1e-3), k  # the parameters did move


def test_the_global_step_changes_the_updates(problem):
  """From step 0 the first update is g / |g| (beta2 = 0); from 1.1M the normaliser barely
  moves, so later updates differ: the decay is not optax's count from zero."""
  params, grads = problem
  at_zero, at_checkpoint = _ours(params, grads, 0), _ours(params, grads, 1_100_000)
  assert np.abs(at_zero["prompt"] - at_checkpoint["prompt"]).max() > 1e-2


def test_step_offset_shifts_the_decay_as_t5x():
  """`step_offset = -s` from step 0 gives the decay of step s (an HF copy of checkpoint s)."""
  rng = np.random.default_rng(1)
  params = {"p": rng.normal(size=(8, 8)).astype(np.float32)}
  grads = [{"p": rng.normal(size=(8, 8)).astype(np.float32)} for _ in range(5)]
  np.testing.assert_allclose(_ours(params, grads, 0, step_offset=-1_100_000)["p"],
                             _ours(params, grads, 1_100_000)["p"], rtol=0, atol=1e-7)


def test_adamw_counts_its_own_updates():
  """AdamW (PyTorch's convention) ignores the global step: its bias correction starts at 1."""
  params = {"p": jnp.ones((3,))}
  tx = optim.adamw(learning_rate=0.1, weight_decay=0.0)
  state = optim.start_at_step(tx.init(params), 1_100_000)
  updates, _ = tx.update({"p": jnp.full((3,), 0.5)}, state, params)
  np.testing.assert_allclose(updates["p"], -0.1, rtol=1e-5)  # m/sqrt(v) = 1 after correction
  counted = optim.adamw(learning_rate=0.1, weight_decay=0.0, global_steps=True)
  state = optim.start_at_step(counted.init(params), 1_100_000)
  counts = optax.tree_utils.tree_get_all_with_path(state, "count")
  assert counts and all(int(c) == 1_100_000 for _, c in counts)


def test_partitioned_groups_keep_their_own_counting_and_report_each_rate():
  params = {"prompt": {"prompt": jnp.ones((4, 8))}, "info": {"w": jnp.ones((8, 8))}}
  tx = optim.partitioned(optim.adafactor(), {"info/.*": optim.adamw(learning_rate=1e-3)})
  state = optim.start_at_step(tx.init(params), 1_100_000)
  rates = {k: float(v) for k, v in optim.learning_rates(tx, state).items()}
  assert rates == pytest.approx({"learning_rate": 0.3, "learning_rate/info": 1e-3})
  assert optim.parameter_groups(tx, params) == {"default": ["prompt/prompt"],
                                                "group_0": ["info/w"]}
  grads = jax.tree_util.tree_map(lambda x: 0.01 * x, params)
  updates, _ = tx.update(grads, state, params)
  # The prompt's Adafactor from step 1.1M: clipped to an RMS of exactly lr (plus weight decay).
  prompt_step = np.asarray(updates["prompt"]["prompt"]) + 1e-5
  assert np.sqrt(np.mean(prompt_step ** 2)) == pytest.approx(0.3, rel=1e-5)
  np.testing.assert_allclose(updates["info"]["w"], -1e-3, rtol=1e-3)  # AdamW's first step


def test_a_pattern_that_is_not_a_regex_is_one_line():
  with pytest.raises(UserError, match=r"partitioned.by_pattern: '\(' is not a regular"):
    optim.partitioned(optim.adafactor(), {"(": optim.adamw()})


# ---- through the trainer ----

@pytest.fixture(scope="module")
def backbones(tmp_path_factory):
  """The same toy weights saved as T5X checkpoints at two different steps."""
  from prompt_tuning.io.t5x import save_t5x  # pylint: disable=g-import-not-at-top
  root = tmp_path_factory.mktemp("t5x")
  params = _random_params(TOY)
  for step in (1_100_000, 2):
    save_t5x(str(root / f"checkpoint_{step}"), params, step=step)
  return root


def _prompt_updates(run, first, last):
  prompts = [np.load(run / "prompts" / f"step_{s}.npy") for s in range(first, last + 1)]
  return [b - a for a, b in zip(prompts, prompts[1:])], prompts


def test_from_checkpoint_1100000_every_prompt_update_has_an_rms_of_lr(tmp_path, backbones):
  start = 1_100_000
  toy_train(tmp_path / "run", steps=start + 4,
            extra=[f"INITIAL_CHECKPOINT_PATH = '{backbones / f'checkpoint_{start}'}'",
                   "CHECKPOINT_PERIOD = 1", "train.keep_checkpoints = None"])
  steps, prompts = _prompt_updates(tmp_path / "run", start + 1, start + 4)
  for step, before in zip(steps, prompts):
    lr_step = step + WD * before  # T5X: p' = (1 - wd) p - lr y; y clipped to an RMS of 1
    assert np.sqrt(np.mean(lr_step ** 2)) == pytest.approx(LR, rel=1e-4)


def test_the_same_weights_at_another_step_train_differently(tmp_path, backbones):
  """Same data, seed and initial prompt, no dropout: only the second-moment decay differs
  (step 2: beta2 = 1 - 3^-0.8 = 0.58 at the first update; step 1.1M: 0.99999)."""
  runs = {}
  for step in (1_100_000, 2):
    run = tmp_path / f"from_{step}"
    toy_train(run, steps=step + 4,
              extra=[f"INITIAL_CHECKPOINT_PATH = '{backbones / f'checkpoint_{step}'}'",
                     "CHECKPOINT_PERIOD = 4", "DROPOUT_RATE = 0.0"])
    runs[step] = np.load(run / "prompts" / f"step_{step + 4}.npy")
  assert np.abs(runs[1_100_000] - runs[2]).max() > 1e-2
