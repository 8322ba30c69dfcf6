"""XPrompt: masks, importance scores, pruning, search, rewinding, report and gin file."""
import functools
import json
from pathlib import Path

import flax.linen as nn
import gin
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from prompt_tuning.errors import UserError
from prompt_tuning.methods.xprompt import masks as xprompt
from prompt_tuning.methods.xprompt.report import write_report
from prompt_tuning.run_dir import XPromptSearchDir
from prompt_tuning.models.config import T5Config
from prompt_tuning.models.t5 import T5
from prompt_tuning.prompts.prompt import Prompt, encoder_prompt


def fold(model, variables):
  return np.asarray(encoder_prompt(model, variables))

CONFIG = T5Config(vocab_size=32, emb_dim=16, num_heads=2, head_dim=4, mlp_dim=16,
                  num_encoder_layers=1, num_decoder_layers=1, relative_attention_num_buckets=4,
                  relative_attention_max_distance=8)
LENGTH = 5
PIECES = 4
REPO = Path(__file__).resolve().parents[1]


class HiddenTokenPrompt(Prompt):
  """A prefix prompt whose token `hidden` is attention-masked: it cannot affect the loss."""
  hidden: int = 0

  def __call__(self, tokens, embedded, embedding_table, deterministic=True):
    x, valid = super().__call__(tokens, embedded, embedding_table, deterministic)
    return x, valid.at[:, self.hidden].set(False)


def _batch(seed=0, size=2):
  rng = np.random.default_rng(seed)
  inputs = rng.integers(2, CONFIG.vocab_size, (size, 6)).astype(np.int32)
  inputs[0, 4:] = 0
  targets = rng.integers(2, CONFIG.vocab_size, (size, 3)).astype(np.int32)
  decoder_inputs = np.concatenate([np.zeros((size, 1), np.int32), targets[:, :-1]], axis=1)
  return {"inputs": inputs, "decoder_inputs": decoder_inputs, "targets": targets}


def _stacked(*batches):
  return jax.tree_util.tree_map(lambda *x: jnp.stack(x), *batches)


def _model(prompt_cls=Prompt, **kwargs):
  return T5(CONFIG, prompt=prompt_cls(length=LENGTH, reparameterizations=(("xprompt", functools.partial(xprompt.XPromptMask, PIECES)),),
                                      **kwargs))


def _init(model):
  batch = _batch()
  return nn.meta.unbox(model.init(jax.random.PRNGKey(0), batch["inputs"], batch["decoder_inputs"]))


def _loss_fn(model):
  def loss(params, masks, batch):
    logits = model.apply({"params": params, "prompt_masks": masks}, batch["inputs"],
                         batch["decoder_inputs"])
    return optax.softmax_cross_entropy_with_integer_labels(logits, batch["targets"]).mean()
  return loss


def _random_masks(seed):
  rng = np.random.default_rng(seed)
  token_mask = (rng.random(LENGTH) > 0.4).astype(np.float32)
  piece_mask = (rng.random((LENGTH, PIECES)) > 0.4).astype(np.float32)
  return token_mask, piece_mask


def test_masks_start_at_one_and_scale_tokens_and_pieces():
  model = _model()
  variables = _init(model)
  token_mask, piece_mask = xprompt.get_masks(variables["prompt_masks"])
  np.testing.assert_array_equal(token_mask, np.ones(LENGTH))
  np.testing.assert_array_equal(piece_mask, np.ones((LENGTH, PIECES)))
  raw = np.asarray(variables["params"]["prompt"]["prompt"])
  np.testing.assert_array_equal(fold(model, variables), raw)

  token_mask, piece_mask = _random_masks(1)
  masked = dict(variables, prompt_masks=xprompt.set_masks(variables["prompt_masks"], token_mask,
                                                           piece_mask))
  width = CONFIG.emb_dim // PIECES
  expected = raw.copy()
  for i in range(LENGTH):
    for j in range(CONFIG.emb_dim):
      expected[i, j] *= token_mask[i] * piece_mask[i, j // width]
  np.testing.assert_array_equal(fold(model, masked), expected)


def test_masks_live_in_the_prompt_masks_collection_not_params():
  boxed = _model().init(jax.random.PRNGKey(0), _batch()["inputs"], _batch()["decoder_inputs"])
  assert set(boxed["params"]["prompt"]) == {"prompt"}
  masks = boxed["prompt_masks"]["prompt"]["xprompt"]
  assert masks["token_mask"].names == ("prompt",)
  assert masks["piece_mask"].names == ("prompt", "prompt_pieces")


def test_pieces_must_divide_the_embedding_size():
  model = T5(CONFIG, prompt=Prompt(length=LENGTH, reparameterizations=(("xprompt", functools.partial(xprompt.XPromptMask, 5)),)))
  with pytest.raises(UserError, match="does not divide the embedding size 16"):
    _init(model)


@pytest.mark.parametrize("per_example", [True, False])
def test_importance_of_a_token_that_cannot_affect_the_loss_is_zero(per_example):
  hidden = 2
  model = _model(HiddenTokenPrompt, hidden=hidden)
  variables = _init(model)
  batches = _stacked(_batch(1), _batch(2))
  token_scores, piece_scores = xprompt.importance_scores(
      _loss_fn(model), variables["params"], variables["prompt_masks"], batches, per_example)
  assert token_scores[hidden] == 0.0
  np.testing.assert_array_equal(piece_scores[hidden], np.zeros(PIECES))
  others = [i for i in range(LENGTH) if i != hidden]
  assert np.all(token_scores[others] > 0)
  assert np.all(piece_scores[others] > 0)


def test_importance_is_the_mean_absolute_per_example_gradient():
  model = _model()
  variables = _init(model)
  token_mask, piece_mask = _random_masks(3)
  token_mask[0] = 1.0
  masks = xprompt.set_masks(variables["prompt_masks"], token_mask, piece_mask)
  batches = [_batch(4), _batch(5)]
  loss = _loss_fn(model)
  scores = xprompt.make_importance_fn(loss)(variables["params"], masks, _stacked(*batches))

  grad = jax.jit(jax.grad(loss, argnums=1))
  total, count = None, 0
  for batch in batches:
    for i in range(batch["inputs"].shape[0]):
      example = jax.tree_util.tree_map(lambda x: x[i:i + 1], batch)
      g = jax.tree_util.tree_map(jnp.abs, grad(variables["params"], masks, example))
      total = g if total is None else jax.tree_util.tree_map(jnp.add, total, g)
      count += 1
  for got, want in zip(xprompt.get_masks(scores), xprompt.get_masks(total)):
    want = np.asarray(want) / count
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5 * float(np.abs(want).max()))

  batch_scores = xprompt.make_importance_fn(loss, per_example=False)(
      variables["params"], masks, _stacked(*batches))
  batch_grads = [jax.tree_util.tree_map(jnp.abs, grad(variables["params"], masks, b)) for b in batches]
  want_tokens = sum(np.asarray(xprompt.get_masks(g)[0]) for g in batch_grads) / len(batches)
  np.testing.assert_allclose(xprompt.get_masks(batch_scores)[0], want_tokens, rtol=1e-4,
                             atol=1e-5 * float(np.abs(want_tokens).max()))


@pytest.mark.parametrize("n", [7, 10, 16])
@pytest.mark.parametrize("ratio", [0.0, 0.1, 0.25, 0.5, 0.9, 1.0])
def test_prune_tokens_removes_exactly_round_ratio_n(n, ratio):
  rng = np.random.default_rng(n)
  scores = rng.random(n)
  mask = xprompt.prune_tokens(scores, np.ones(n), ratio)
  pruned = np.flatnonzero(mask == 0)
  assert len(pruned) == round(ratio * n)
  # The pruned tokens are the lowest-scoring ones.
  assert set(pruned) == set(np.argsort(scores)[:round(ratio * n)])


def test_prune_tokens_is_cumulative_over_all_tokens():
  scores = np.array([0.5, 0.1, 0.9, 0.3, 0.7, 0.2, 0.8, 0.4, 0.6, 1.0])
  mask = np.ones(10)
  mask[2] = 0.0  # pruned earlier although its score is now high
  mask = xprompt.prune_tokens(scores, mask, 0.3)
  assert np.flatnonzero(mask == 0).tolist() == [1, 2, 5]
  mask = xprompt.prune_tokens(scores, mask, 0.5)
  assert np.flatnonzero(mask == 0).tolist() == [1, 2, 3, 5, 7]
  with pytest.raises(ValueError, match="must not decrease"):
    xprompt.prune_tokens(scores, mask, 0.2)


@pytest.mark.parametrize("ratio", [0.1, 0.3, 0.5, 0.75])
def test_pieces_are_only_pruned_inside_kept_tokens(ratio):
  rng = np.random.default_rng(0)
  token_mask = np.array([1, 0, 1, 1, 0, 1], np.float32)
  piece_scores = rng.random((6, 4))
  piece_scores[token_mask == 0] = -1.0  # lowest of all, yet must not be chosen
  piece_mask = xprompt.prune_pieces(piece_scores, np.ones((6, 4)), token_mask, ratio)
  np.testing.assert_array_equal(piece_mask[token_mask == 0], 1.0)
  kept_rows = piece_mask[token_mask == 1]
  assert int((kept_rows == 0).sum()) == round(ratio * kept_rows.size)
  inside_scores = piece_scores[token_mask == 1]
  threshold = np.sort(inside_scores.reshape(-1))[round(ratio * kept_rows.size) - 1]
  assert np.all(inside_scores[kept_rows == 0] <= threshold)
  assert np.all(inside_scores[kept_rows == 1] > threshold)


def test_search_prunes_tokens_then_pieces_and_keeps_the_best():
  calls = []
  rng = np.random.default_rng(0)
  token_scores, piece_scores = rng.random(LENGTH), rng.random((LENGTH, PIECES))

  def score_fn(token_mask, piece_mask):
    calls.append((token_mask.copy(), piece_mask.copy()))
    return token_scores, piece_scores

  def evaluate_fn(token_mask, piece_mask):
    # Best with 3 of 5 tokens kept, then with at most 1/4 of their pieces pruned.
    kept = token_mask.sum()
    pieces_pruned = 1 - piece_mask[token_mask > 0].mean()
    return -abs(kept - 3) - (pieces_pruned > 0.3)

  result = xprompt.search(score_fn, evaluate_fn, np.ones(LENGTH), np.ones((LENGTH, PIECES)),
                          token_ratios=(0.2, 0.4, 0.6), piece_ratios=(0.25, 0.5))
  levels = [(c.level, c.ratio) for c in result.candidates]
  assert levels == [("none", 0.0), ("token", 0.2), ("token", 0.4), ("token", 0.6),
                    ("piece", 0.25), ("piece", 0.5)]
  assert len(calls) == 5  # re-scored before every round
  assert result.best_token.ratio == 0.4 and result.best_token.kept_tokens == 3
  # Piece rounds start from the best token sub-prompt; a tie keeps the larger one.
  np.testing.assert_array_equal(calls[3][0], result.best_token.token_mask)
  assert result.best is result.best_token
  # With a tolerance the user sets, a smaller sub-prompt within it wins the tie.
  tolerant = xprompt.search(score_fn, evaluate_fn, np.ones(LENGTH), np.ones((LENGTH, PIECES)),
                            token_ratios=(0.2, 0.4, 0.6), piece_ratios=(0.25, 0.5),
                            tolerance=0.0)
  assert (tolerant.best.level, tolerant.best.ratio) == ("piece", 0.25)
  assert tolerant.best.kept_tokens == 3
  np.testing.assert_array_equal(tolerant.best.piece_mask[tolerant.best.token_mask == 0], 1.0)


def test_a_flat_metric_prunes_nothing():
  # Ties used to walk the search to 90% of tokens, then 90% of pieces.
  result = xprompt.search(lambda t, p: (np.arange(LENGTH, dtype=float), np.ones((LENGTH, PIECES))),
                          lambda t, p: 0.5, np.ones(LENGTH), np.ones((LENGTH, PIECES)))
  assert result.best.level == "none" and result.best.kept_values_fraction == 1.0


def test_importance_estimate_converges_as_batches_grow():
  # Per-example loss a_x . mask with random a_x: I = E_x |a_x|; the estimate from
  # n batches has error ~ 1/sqrt(n). Errors must fall as n grows 1 -> 8 -> 64.
  rng = np.random.default_rng(0)
  size = 4
  population = rng.normal(1.0, 2.0, (64 * 8 * size, LENGTH)).astype(np.float32)
  truth = np.abs(population).mean(0)

  def loss(params, masks, batch):
    return jnp.mean(batch["a"] @ masks["m"])

  importance = xprompt.make_importance_fn(loss)
  masks = {"m": jnp.ones(LENGTH)}
  errors = []
  for n in (1, 8, 64):
    batches = {"a": jnp.asarray(rng.permutation(population)[:n * size].reshape(n, size, LENGTH))}
    estimate = np.asarray(importance({}, masks, batches)["m"])
    errors.append(np.abs(estimate - truth).mean())
  assert errors[0] > errors[1] > errors[2], errors


def test_rewinding_restores_stage1_values_and_pruned_entries_stay_zero():
  model = _model()
  variables = _init(model)
  loss = _loss_fn(model)
  batch = _batch(7)
  backbone = {k: v for k, v in variables["params"].items() if k != "prompt"}

  def train(trainable, masks, optimizer, steps):
    def step_loss(t):
      return loss(dict(backbone, prompt=t), masks, batch)
    state = optimizer.init(trainable)
    for _ in range(steps):
      grads = jax.grad(step_loss)(trainable)
      updates, state = optimizer.update(grads, state, trainable)
      trainable = optax.apply_updates(trainable, updates)
    return trainable, grads

  stage1_optimizer = optax.adafactor(0.3, decay_rate=0.8, multiply_by_parameter_scale=False,
                                     weight_decay_rate=1e-5)
  stage1, _ = train(variables["params"]["prompt"], variables["prompt_masks"], stage1_optimizer, 3)
  token_mask, piece_mask = _random_masks(11)
  masks = xprompt.set_masks(variables["prompt_masks"], token_mask, piece_mask)
  kept = np.asarray(xprompt.effective_mask(token_mask, piece_mask, CONFIG.emb_dim)) > 0
  assert kept.any() and not kept.all()

  rewound = xprompt.rewind_params({"prompt": stage1}, token_mask, piece_mask)["prompt"]
  stage1_raw, raw = np.asarray(stage1["prompt"]), np.asarray(rewound["prompt"])
  np.testing.assert_array_equal(raw[kept], stage1_raw[kept])
  np.testing.assert_array_equal(raw[~kept], 0.0)

  for optimizer in (stage1_optimizer, optax.adamw(0.1, weight_decay=0.01)):
    retrained, grads = train(rewound, masks, optimizer, 3)
    np.testing.assert_array_equal(np.asarray(grads["prompt"])[~kept], 0.0)
    value = np.asarray(retrained["prompt"])
    np.testing.assert_array_equal(value[~kept], 0.0)
    assert not np.allclose(value[kept], stage1_raw[kept])  # training did move the kept values
    exported = fold(model, {"params": dict(backbone, prompt=retrained), "prompt_masks": masks})
    np.testing.assert_array_equal(exported[~kept], 0.0)
    np.testing.assert_array_equal(exported[kept], value[kept])


def test_report_and_heatmap_are_consistent_with_the_exported_prompt(tmp_path):
  model = _model()
  variables = _init(model)
  loss = _loss_fn(model)
  importance = xprompt.make_importance_fn(loss)
  batches = _stacked(_batch(1), _batch(2))
  val = _batch(3, size=4)

  def with_masks(token_mask, piece_mask):
    return dict(variables, prompt_masks=xprompt.set_masks(variables["prompt_masks"], token_mask,
                                                           piece_mask))

  def score_fn(token_mask, piece_mask):
    v = with_masks(token_mask, piece_mask)
    return xprompt.get_masks(importance(v["params"], v["prompt_masks"], batches))

  def evaluate_fn(token_mask, piece_mask):
    v = with_masks(token_mask, piece_mask)
    return -float(loss(v["params"], v["prompt_masks"], val))

  token_mask, piece_mask = xprompt.get_masks(variables["prompt_masks"])
  result = xprompt.search(score_fn, evaluate_fn, token_mask, piece_mask,
                          token_ratios=(0.2, 0.4), piece_ratios=(0.25, 0.5))
  stages = {"prompt_tuning": 0.5, "pruning": result.best.metric, "rewinding": 0.6}
  paths = write_report(XPromptSearchDir(tmp_path / "xprompt"), result, stages,
                       metric_name="neg_loss")
  assert paths["report"].endswith("report.json") and paths["heatmap"].endswith("importance.png")
  with open(paths["heatmap"], "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"
  with open(paths["report"]) as f:
    report = json.load(f)

  assert len(report["token_scores"]) == LENGTH
  assert np.shape(report["piece_scores"]) == (LENGTH, PIECES)
  np.testing.assert_allclose(report["token_scores"], result.candidates[1].token_scores, rtol=1e-6)
  assert set(np.ravel(report["token_mask"])) <= {0, 1}
  assert set(np.ravel(report["piece_mask"])) <= {0, 1}
  assert report["stages"] == stages
  assert [(c["level"], c["ratio"]) for c in report["candidates"]] == [
      ("none", 0.0), ("token", 0.2), ("token", 0.4), ("piece", 0.25), ("piece", 0.5)]
  assert all(np.isfinite(c["metric"]) for c in report["candidates"])
  best_metric = max(c["metric"] for c in report["candidates"])
  assert report["chosen"]["metric"] == best_metric

  exported = fold(model, with_masks(np.array(report["token_mask"]), np.array(report["piece_mask"])))
  kept = np.repeat(np.array(report["token_mask"])[:, None] * np.array(report["piece_mask"]),
                   CONFIG.emb_dim // PIECES, axis=1) > 0
  np.testing.assert_array_equal(exported == 0, ~kept)


def test_gin_file_adds_the_masks():
  gin.clear_config()
  try:
    gin.parse_config_files_and_bindings([str(REPO / "configs" / "methods" / "xprompt.gin")],
                                        ["Prompt.length = 5", "XPROMPT_PIECES = 4"])
    prompt = Prompt()
  finally:
    gin.clear_config()
  ((name, make),) = prompt.reparameterizations
  mask = make(name=name)
  assert name == "xprompt" and isinstance(mask, xprompt.XPromptMask) and mask.pieces == 4
  token_mask, piece_mask = xprompt.get_masks(_init(T5(CONFIG, prompt=prompt))["prompt_masks"])
  assert token_mask.shape == (5,) and piece_mask.shape == (5, 4)


def test_report_shows_the_score_that_pruned_each_token_and_marks_it(tmp_path):
  # Round 2 re-scores at the pruned mask, where the already-pruned token 0 gets a
  # meaningless high score: the report must keep the round-1 score that pruned it.
  rounds = iter([np.array([0.1, 0.5, 0.6, 0.7, 0.8]), np.array([9.0, 0.2, 0.6, 0.7, 0.8])])

  def score_fn(token_mask, piece_mask):
    return next(rounds), np.ones((LENGTH, PIECES))

  result = xprompt.search(score_fn, lambda t, p: float(t.sum() < LENGTH) + 0.1 * (5 - t.sum()),
                          np.ones(LENGTH), np.ones((LENGTH, PIECES)), token_ratios=(0.2, 0.4),
                          piece_ratios=())
  assert result.best.kept_tokens == 3
  paths = write_report(XPromptSearchDir(tmp_path), result, {"prompt_tuning": 0.0, "pruning": 1.2})
  report = json.loads(open(paths["report"]).read())
  assert report["decisive_token_scores"][:2] == pytest.approx([0.1, 0.2])  # what pruned them
  assert report["decisive_token_scores"][2:] == pytest.approx([0.6, 0.7, 0.8])
  assert report["decisive_piece_scores"][0] == [None] * PIECES  # gone with their token
  assert "cannot be below" in report["note"]
  with open(paths["heatmap"], "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"
