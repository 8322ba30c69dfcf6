"""Packing with a prompt per segment: the packer's rows, and a packed batch giving the
per-example losses and gradients of the same examples unpacked."""
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from prompt_tuning.data import packing
from prompt_tuning.errors import UserError
from prompt_tuning.methods.residual.reparameterization import ResidualReparameterization
from prompt_tuning.methods.xprompt.masks import MASK_COLLECTION, XPromptMask, set_masks
from prompt_tuning.models import losses
from prompt_tuning.models.config import T5Config
from prompt_tuning.models.packed import model_kwargs, per_segment_sums
from prompt_tuning.models.t5 import T5
from prompt_tuning.prompts.prompt import Prompt
from prompt_tuning.train.trainable import merge_variables, split_variables

CONFIG = T5Config(vocab_size=50, emb_dim=16, num_heads=2, head_dim=8, mlp_dim=32,
                  num_encoder_layers=2, num_decoder_layers=2, relative_attention_num_buckets=8,
                  relative_attention_max_distance=12)
P, L, LT = 3, 14, 4
LAYOUT = packing.PackedLayout(P, L, 3 * LT)


def examples(n, seed=0, longest=L):
  rng = np.random.default_rng(seed)
  out = []
  for _ in range(n):
    k, m = int(rng.integers(1, longest + 1)), int(rng.integers(1, LT + 1))
    out.append(packing.Example(rng.integers(2, CONFIG.vocab_size, k).astype(np.int32),
                               rng.integers(2, CONFIG.vocab_size, m).astype(np.int32),
                               np.ones(m, np.float32)))
  return out


def unpacked(exs):
  """The examples padded to `[N, L]` / `[N, LT]`, as the unpacked feature converter gives them."""
  n = len(exs)
  out = {"encoder_input_tokens": np.zeros((n, L), np.int32),
         "decoder_target_tokens": np.zeros((n, LT), np.int32),
         "decoder_input_tokens": np.zeros((n, LT), np.int32),
         "decoder_loss_weights": np.zeros((n, LT), np.float32)}
  for i, e in enumerate(exs):
    out["encoder_input_tokens"][i, :len(e.inputs)] = e.inputs
    out["decoder_target_tokens"][i, :len(e.targets)] = e.targets
    out["decoder_input_tokens"][i, 1:len(e.targets)] = e.targets[:-1]
    out["decoder_loss_weights"][i, :len(e.targets)] = e.weights
  return out


def test_rows_hold_each_segment_behind_its_prompt_slots():
  exs = [packing.Example(np.array([5, 6, 1]), np.array([7, 1]), np.ones(2, np.float32)),
         packing.Example(np.array([8, 1]), np.array([9, 4, 1]), np.ones(3, np.float32))]
  layout = packing.PackedLayout(2, 7, 6)
  batch, count = packing.pack(exs, 1, layout)
  assert count == 2
  np.testing.assert_array_equal(batch["encoder_input_tokens"], [[0, 0, 5, 6, 1, 0, 0, 8, 1]])
  np.testing.assert_array_equal(batch["encoder_segment_ids"], [[1, 1, 1, 1, 1, 2, 2, 2, 2]])
  np.testing.assert_array_equal(batch["encoder_positions"], [[0, 1, 2, 3, 4, 0, 1, 2, 3]])
  np.testing.assert_array_equal(batch["decoder_target_tokens"], [[7, 1, 9, 4, 1, 0]])
  np.testing.assert_array_equal(batch["decoder_input_tokens"], [[0, 7, 0, 9, 4, 0]])
  np.testing.assert_array_equal(batch["decoder_segment_ids"], [[1, 1, 2, 2, 2, 0]])
  np.testing.assert_array_equal(batch["decoder_positions"], [[0, 1, 0, 1, 2, 0]])
  np.testing.assert_array_equal(batch["decoder_loss_weights"], [[1, 1, 1, 1, 1, 0]])


def test_a_batch_is_the_longest_prefix_that_fits_and_batches_continue_the_stream():
  exs = examples(40)
  enc, dec = packing.sizes(exs, LAYOUT)
  start, seen = 0, []
  while start < len(exs):
    batch, count = packing.pack(exs[start:], 2, LAYOUT)
    rest = exs[start:start + count + 1]
    if start + count < len(exs):  # one more example would not fit
      e, d = packing.sizes(rest, LAYOUT)
      assert packing.first_fit_decreasing(e, d, 2, LAYOUT) is None
    tokens = batch["encoder_input_tokens"]
    seen.append(int((tokens > 0).sum()))
    assert (batch["encoder_segment_ids"].max(axis=1) > 0).all() or start + count == len(exs)
    start += count
  assert sum(seen) == sum(len(e.inputs) for e in exs)  # every token once, none lost
  assert enc.sum() / (len(seen) * 2 * LAYOUT.encoder_length) > 0.6  # rows mostly full


def test_an_example_longer_than_a_row_is_one_error_line():
  too_long = packing.Example(np.ones(L + 1, np.int32), np.ones(1, np.int32), np.ones(1, np.float32))
  with pytest.raises(UserError, match="does not fit a packed row"):
    packing.pack([too_long], 2, LAYOUT)


def test_packed_targets_length_is_checked():
  with pytest.raises(UserError, match="PACK_TARGETS_LENGTH"):
    packing.layout_for({"inputs": L, "targets": LT}, P, LT - 1)
  assert packing.layout_for({"inputs": 512, "targets": 8}, 100).targets_length == 6 * 8
  assert packing.layout_for({"inputs": 512, "targets": 8}, 0).targets_length == 8 * 8


def _per_example_loss(model, variables, batch, segments=None):
  """`[rows, S]` (packed: per segment) or `[N]` summed token losses incl. z-loss."""
  logits = model.apply(variables, batch["encoder_input_tokens"], batch["decoder_input_tokens"],
                       **model_kwargs(batch))
  token_loss, _ = losses.token_cross_entropy_with_z_loss(logits, batch["decoder_target_tokens"])
  token_loss = token_loss * batch["decoder_loss_weights"]
  if segments is None:
    return token_loss.sum(axis=1)
  return per_segment_sums(token_loss, batch["decoder_segment_ids"], segments)


def _segment_of(placed):
  """(row, segment index from 0) of each packed example, in the packer's numbering."""
  counts, out = {}, []
  for row in placed:
    counts[row] = counts.get(row, 0) + 1
    out.append((int(row), counts[row] - 1))
  return out


# Prompt tuning, and the methods that reparameterize its `[P, E]` value: Residual Prompt
# Tuning's MLP and XPrompt's masks (some tokens and pieces pruned, so the masks matter).
METHODS = {
    "prompt": (),
    "residual": (("residual", functools.partial(ResidualReparameterization, bottleneck=8)),),
    "xprompt": (("xprompt_mask", functools.partial(XPromptMask, pieces=4)),),
}


@pytest.fixture(scope="module", params=sorted(METHODS))
def prompt_model(request):
  model = T5(CONFIG, prompt=Prompt(length=P, reparameterizations=METHODS[request.param]))
  tokens, decoder = np.ones((1, L), np.int32), np.ones((1, LT), np.int32)
  variables = nn.meta.unbox(jax.jit(model.init)(jax.random.PRNGKey(0), tokens, decoder))
  # A prompt unlike the token embeddings, so a slot filled wrongly would show.
  variables["params"]["prompt"]["prompt"] = jax.random.normal(
      jax.random.PRNGKey(7), (P, CONFIG.emb_dim))
  if request.param == "xprompt":
    variables[MASK_COLLECTION] = set_masks(variables[MASK_COLLECTION], np.array([1., 0., 1.]),
                                           np.array([[1., 1., 0., 1.]] * P))
  return model, variables


@pytest.mark.slow
def test_packed_losses_and_prompt_gradients_equal_unpacked_per_example(prompt_model):
  """Per method (`METHODS`): the losses of each example and their gradients of the raw prompt."""
  model, variables = prompt_model
  exs = examples(12, seed=3, longest=6)
  enc, dec = packing.sizes(exs, LAYOUT)
  count, placed = packing.longest_prefix(enc, dec, 3, LAYOUT)
  assert count >= 6  # several segments per row, or the test would prove little
  exs = exs[:count]
  packed = packing.pack_rows(exs, placed, 3, LAYOUT)
  assert packed["encoder_segment_ids"].max() >= 2
  plain = unpacked(exs)
  where = _segment_of(placed)
  segments = int(packed["encoder_segment_ids"].max())

  trainable, frozen = split_variables(variables, ["prompt/.*"])

  def losses_and_jacobian(batch, segs=None):
    """Per-example losses and each one's gradient w.r.t. the prompt, in one compile."""
    def per_example(prompt):
      t = {**trainable, "prompt": {**trainable["prompt"], "prompt": prompt}}
      return _per_example_loss(model, merge_variables(t, frozen), batch, segs)
    prompt = trainable["prompt"]["prompt"]
    return jax.jit(lambda p: (per_example(p), jax.jacrev(per_example)(p)))(prompt)

  want, want_grads = losses_and_jacobian(plain)  # [N], [N, P, E]
  got, got_grads = losses_and_jacobian(packed, segments)  # [rows, S], [rows, S, P, E]
  rows, segs = zip(*where)
  np.testing.assert_allclose(got[rows, segs], want, rtol=1e-5, atol=1e-5)
  # Every example moves the prompt (what the masks keep: XPrompt's pruned token gets none).
  assert np.abs(want_grads).max(axis=(1, 2)).min() > 1e-3
  np.testing.assert_allclose(got_grads[rows, segs], want_grads, rtol=1e-5, atol=1e-5)
  # Padding segments (no example) contribute nothing.
  np.testing.assert_allclose(got.sum(), want.sum(), rtol=1e-5, atol=1e-5)


def test_evaluation_and_inference_refuse_pack_in_one_line():
  from prompt_tuning.train.evaluation import EvalModelFns
  with pytest.raises(UserError, match="do not pack .*set PACK = False"):
    EvalModelFns(None, None, None, None, pack=True)


def test_pack_auto_packs_on_tpu_only_and_not_a_model_that_cannot(monkeypatch, capsys):
  from prompt_tuning.prompts.per_layer import PerLayerPrompt
  from prompt_tuning.train import packed_runs
  assert packed_runs.resolve_pack("auto", "tpu") is True
  assert packed_runs.resolve_pack("auto", "cpu") is False
  assert packed_runs.resolve_pack(True, "cpu") is True
  with pytest.raises(UserError, match="PACK .* must be True, False or 'auto'"):
    packed_runs.resolve_pack("yes")
  monkeypatch.setattr(packed_runs.jax, "default_backend", lambda: "tpu")
  per_layer = T5(CONFIG, prompt=PerLayerPrompt(prompt=Prompt(length=P)))
  assert packed_runs.resolve_for_model("auto", T5(CONFIG, prompt=Prompt(length=P))) is True
  assert packed_runs.resolve_for_model("auto", per_layer) is False
  assert "packing (PACK='auto'): off, since per-layer prompts" in capsys.readouterr().out
  with pytest.raises(UserError, match="PACK = True does not work here: per-layer .*PACK = False"):
    packed_runs.resolve_for_model(True, per_layer)


@pytest.mark.slow
def test_packed_deltas_of_every_pet_baseline_match_unpacked():
  """LoRA, adapters, biases, IA3 and prefix keys/values (every baseline at once) with a prompt:
  per-example losses, and the gradient of all their parameters of a randomly weighted sum of
  them (a mixed-up example would change it), packed vs unpacked."""
  import dataclasses
  import flax
  from prompt_tuning.methods.apet import baselines
  from prompt_tuning.models.deltas import DeltaPlan
  plans = (baselines.bitfit_deltas, baselines.lora_deltas, baselines.adapter_deltas,
           baselines.ia3_deltas, baselines.concat_deltas)
  plan = DeltaPlan(sum((make().rules for make in plans), ()))
  config = dataclasses.replace(CONFIG, num_encoder_layers=1, num_decoder_layers=1)
  model = T5(config, prompt=Prompt(length=P), deltas=plan)
  tokens, decoder = np.ones((1, L), np.int32), np.ones((1, LT), np.int32)
  params = nn.meta.unbox(jax.jit(model.init)(jax.random.PRNGKey(0), tokens, decoder))["params"]
  flat = flax.traverse_util.flatten_dict(params, sep="/")
  names = {ins.name for _, ins in plan.rules} | {"prompt"}
  new = sorted(k for k in flat if names & set(k.split("/")))
  keys = jax.random.split(jax.random.PRNGKey(5), len(new))
  # Away from the identity at init, so every delta changes the output.
  trained = {k: flat[k] + 0.3 * jax.random.normal(key, flat[k].shape) for k, key in zip(new, keys)}

  exs = examples(10, seed=4, longest=6)
  enc, dec = packing.sizes(exs, LAYOUT)
  count, placed = packing.longest_prefix(enc, dec, 3, LAYOUT)
  exs = exs[:count]
  packed, plain = packing.pack_rows(exs, placed, 3, LAYOUT), unpacked(exs)
  segments = int(packed["encoder_segment_ids"].max())
  assert segments >= 2
  rows, segs = (np.array(x) for x in zip(*_segment_of(placed)))
  weights = np.random.default_rng(0).uniform(0.5, 2.0, count).astype(np.float32)
  packed_weights = np.zeros((3, segments), np.float32)
  packed_weights[rows, segs] = weights

  def losses_and_grads(batch, w, segs=None):
    def weighted(t):
      merged = flax.traverse_util.unflatten_dict({**flat, **t}, sep="/")
      per_example = _per_example_loss(model, {"params": merged}, batch, segs)
      return jnp.sum(w * per_example), per_example
    return jax.jit(jax.grad(weighted, has_aux=True))(trained)

  want_grads, want = losses_and_grads(plain, weights)
  got_grads, got = losses_and_grads(packed, packed_weights, segments)
  np.testing.assert_allclose(got[rows, segs], want, rtol=1e-5, atol=1e-5)
  for name in new:
    assert np.abs(want_grads[name]).max() > 0, name
    np.testing.assert_allclose(got_grads[name], want_grads[name], rtol=1e-5, atol=1e-5,
                               err_msg=name)
