"""Length bucketing (`prompt_tuning.data.bucketing`): checks, grouping, resume, and the
trainer and eval paths (one compile per bucket, same losses and scores as fixed shapes)."""
import numpy as np
import pytest
import tensorflow as tf

from prompt_tuning.data import bucketing
from prompt_tuning.data.bucketing import LengthBuckets
from prompt_tuning.errors import UserError
from tests.train_helpers import TOY_FILES, losses, toy_train

LENGTHS = {"inputs": 16, "targets": 8}


def _examples(n: int, seed: int = 0, inputs: int = 16, targets: int = 8):
  """`n` zero-padded feature dicts of random lengths; row i's first token is i + 3 (its id)."""
  rng = np.random.default_rng(seed)
  enc = np.zeros((n, inputs), np.int32)
  tgt = np.zeros((n, targets), np.int32)
  for i in range(n):
    enc[i, :rng.integers(1, inputs + 1)] = rng.integers(3, 50)
    enc[i, 0] = i + 3
    tgt[i, :rng.integers(1, targets + 1)] = rng.integers(3, 50)
  dec_in = np.concatenate([np.zeros((n, 1), np.int32), tgt[:, :-1]], axis=1)
  return {"encoder_input_tokens": enc, "decoder_input_tokens": dec_in,
          "decoder_target_tokens": tgt, "decoder_loss_weights": (tgt > 0).astype(np.float32)}


@pytest.mark.parametrize("buckets, message", [
    (LengthBuckets(inputs=[8, 4, 16]), "not strictly increasing"),
    (LengthBuckets(inputs=[4, 8]), "does not cover TASK_FEATURE_LENGTHS['inputs']=16"),
    (LengthBuckets(inputs=[4, 16, 32]), "[32] are never used"),
    (LengthBuckets(inputs=[0, 16]), "not a positive integer"),
    (LengthBuckets(inputs=[]), "non-empty list"),
    (LengthBuckets(inputs=[16], targets=[4]), "TARGET_BUCKETS"),
    (LengthBuckets(inputs=[16], window=0), "BUCKET_WINDOW"),
    (LengthBuckets(inputs="fast"), "BUCKETS (LengthBuckets.inputs)='fast' is neither 'auto'"),
    # 'auto' at inputs of 16 is fixed shapes: a window would be ignored.
    (LengthBuckets(window=4), "set BUCKETS explicitly, e.g. --gin.BUCKETS=[16]"),
])
def test_bad_bucket_lists_are_one_line_user_errors(buckets, message):
  with pytest.raises(UserError) as e:
    bucketing.check_buckets(buckets, LENGTHS)
  assert message in str(e.value) and "\n" not in str(e.value)


def test_batches_are_cut_to_the_smallest_bucket_holding_their_longest_example():
  ex = _examples(64)
  buckets = bucketing.check_buckets(LengthBuckets([4, 8, 16], [4, 8]), LENGTHS)
  for start in range(0, 64, 4):
    batch = {k: v[start:start + 4] for k, v in ex.items()}
    cut = bucketing.pad_to_buckets(batch, buckets)
    longest = bucketing.lengths(batch["encoder_input_tokens"]).max()
    width = cut["encoder_input_tokens"].shape[1]
    assert width == min(b for b in (4, 8, 16) if b >= longest)
    np.testing.assert_array_equal(cut["encoder_input_tokens"],
                                  batch["encoder_input_tokens"][:, :width])
    assert not batch["encoder_input_tokens"][:, width:].any()  # only padding was cut
    widths = {cut[k].shape[1] for k in bucketing.TARGET_FEATURES}
    assert len(widths) == 1 and widths <= {4, 8}
  with pytest.raises(UserError, match="fits none of BUCKETS"):
    bucketing.pad_to_buckets(ex, LengthBuckets((4, 8)))


def _stream(buckets, seed=7, skip=0, n=96, batch=4):
  ds = tf.data.Dataset.from_tensor_slices(_examples(n))
  return list(bucketing.bucketed_batches(ds, batch, buckets, seed, skip))


def test_window_one_keeps_the_fixed_shape_batches():
  ex = _examples(96)
  got = _stream(LengthBuckets((4, 8, 16)))
  assert len(got) == 24
  for i, batch in enumerate(got):
    np.testing.assert_array_equal(batch["encoder_input_tokens"][:, 0],
                                  ex["encoder_input_tokens"][4 * i:4 * i + 4, 0])


def test_windows_group_lengths_deterministically_and_resume_exactly():
  buckets = LengthBuckets((4, 8, 16), (4, 8), window=4)
  full = _stream(buckets)
  ids = [b["encoder_input_tokens"][:, 0] for b in full]
  # Each window of 4 batches holds exactly the window's 16 examples of the stream.
  for w in range(6):
    assert sorted(np.concatenate(ids[4 * w:4 * w + 4])) == list(range(3 + 16 * w, 3 + 16 * w + 16))
  # Grouped by length: less padding than the fixed-shape batches of the same stream.
  width = lambda batches: sum(b["encoder_input_tokens"].size for b in batches)
  assert width(full) < width(_stream(LengthBuckets((4, 8, 16))))
  again, other_seed = _stream(buckets), _stream(buckets, seed=8)
  assert all(np.array_equal(a["encoder_input_tokens"], b["encoder_input_tokens"])
             for a, b in zip(full, again))
  assert any(not np.array_equal(a, b["encoder_input_tokens"][:, 0])
             for a, b in zip(ids, other_seed))
  for skip in (1, 4, 6, 23):
    resumed = _stream(buckets, skip=skip)
    assert len(resumed) == len(full) - skip
    for a, b in zip(resumed, full[skip:]):
      assert a.keys() == b.keys()
      for k in a:
        np.testing.assert_array_equal(a[k], b[k])


@pytest.mark.parametrize("length, ladder", [
    (16, [16]), (64, [64]), (73, [73]), (74, [64, 74]), (100, [64, 80, 100]),
    (128, [64, 80, 96, 112, 128]),
    (512, [64, 80, 96, 112, 128, 160, 192, 224, 256, 320, 384, 448, 512]),
    (1000, [64, 80, 96, 112, 128, 160, 192, 224, 256, 320, 384, 448, 512, 640, 768, 1000]),
])
def test_auto_buckets_are_four_per_octave_below_the_inputs_length(length, ladder):
  assert list(bucketing.auto_inputs(length)) == ladder
  checked = bucketing.check_buckets(LengthBuckets(), {"inputs": length, "targets": 8})
  # One bucket is the fixed-shape run itself: no bucketing code path at all.
  assert (checked is None if len(ladder) == 1 else checked == LengthBuckets(tuple(ladder)))


def test_auto_means_fixed_shapes_on_tpu(monkeypatch, capsys):
  monkeypatch.setattr(bucketing.jax, "default_backend", lambda: "tpu")
  assert bucketing.check_buckets(LengthBuckets(), {"inputs": 300, "targets": 8}) is None
  assert "length buckets (auto, tpu): fixed shapes [300]" in capsys.readouterr().out
  # An explicit list still buckets there.
  assert bucketing.check_buckets(LengthBuckets((64, 300)), {"inputs": 300}).inputs == (64, 300)


@pytest.fixture
def traced_widths(monkeypatch):
  """The encoder widths the train step is traced (compiled) for, in order."""
  from prompt_tuning.train import step as step_lib
  traced = []
  real = step_lib.token_loss_sums

  def counting(model, variables, batch, *args, **kwargs):
    traced.append(batch["encoder_input_tokens"].shape[1])  # runs once per trace (compile)
    return real(model, variables, batch, *args, **kwargs)

  monkeypatch.setattr(step_lib, "token_loss_sums", counting)
  return traced


@pytest.mark.slow
def test_default_run_buckets_long_inputs_with_fixed_shape_losses(tmp_path, traced_widths):
  # Without dropout: a bucketed batch draws other dropout masks than the full-width batch.
  long = ["BATCH_SIZE = 2", "MIXTURE_OR_TASK_NAME = 'toy_long_parity'",
          "TASK_FEATURE_LENGTHS = {'inputs': 96, 'targets': 8}", "DROPOUT_RATE = 0.0"]
  fixed = toy_train(tmp_path / "fixed", 6, extra=long, files=TOY_FILES + ("runs/fixed_shapes.gin",))
  assert traced_widths == [96]
  traced_widths.clear()
  bucketed = toy_train(tmp_path / "auto", 6, extra=long)  # the run files' default: 'auto'
  # Inputs of 3-126 tokens cut at 96: batches fall in several of 64, 80, 96, each compiled once.
  assert len(set(traced_widths)) >= 2 and set(traced_widths) <= {64, 80, 96}
  assert len(traced_widths) == len(set(traced_widths))
  np.testing.assert_allclose(losses(bucketed), losses(fixed), rtol=1e-5)


@pytest.mark.slow
def test_trainer_compiles_once_per_bucket_and_matches_fixed_shape_losses(tmp_path, traced_widths):
  traced = traced_widths
  # Without dropout: a bucketed batch draws other dropout masks than the full-width batch.
  steps, small = 6, ["BATCH_SIZE = 2", "DROPOUT_RATE = 0.0"]
  fixed = toy_train(tmp_path / "fixed", steps, extra=small)
  assert traced == [16]  # 'auto' at inputs of 16: one bucket, fixed shapes
  traced.clear()
  bucketed = toy_train(tmp_path / "bucketed", steps, files=(
      "models/t5_1_1_toy_prompt.gin", "runs/prompt_finetune.gin", "runs/length_buckets.gin"),
      extra=small + ["BUCKETS = [5, 8, 16]"])
  # Toy inputs are 3-7 tokens: both small buckets occur (fixed data), each compiled once.
  assert sorted(traced) == [5, 8]
  np.testing.assert_allclose(losses(bucketed), losses(fixed), rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_eval_scores_and_predictions_are_the_same_bucketed(tmp_path):
  from prompt_tuning.models.config import T5Config
  from prompt_tuning.models.t5 import T5
  from prompt_tuning.prompts.prompt import Prompt
  from prompt_tuning.prompts import initializers
  from prompt_tuning.train.evaluation import EvalModelFns
  from prompt_tuning.train.run_setup import build_run

  config = T5Config(vocab_size=64, emb_dim=16, num_heads=2, head_dim=8, mlp_dim=32,
                    num_encoder_layers=1, num_decoder_layers=1,
                    relative_attention_num_buckets=8, relative_attention_max_distance=16)
  model = T5(config, prompt=Prompt(length=3, initializer=initializers.uniform()))
  ctx = build_run(model=model, seed=0)
  ds = tf.data.Dataset.from_tensor_slices(_examples(12)).enumerate()
  plain = EvalModelFns(ctx.model, ctx.partitioner, ctx.variables, ctx.shardings, batch_size=4,
                       max_decode_length=4)
  cut = EvalModelFns(ctx.model, ctx.partitioner, ctx.variables, ctx.shardings, batch_size=4,
                     max_decode_length=4, length_buckets=LengthBuckets((4, 8, 12, 16)))
  want, got = dict(plain.score_fn(ds)), dict(cut.score_fn(ds))
  assert want.keys() == got.keys() == set(range(12))
  np.testing.assert_allclose([got[i] for i in range(12)], [want[i] for i in range(12)],
                             rtol=1e-5, atol=1e-5)
  # One compile per input bucket that occurred (rank scoring batches 4 distinct inputs), none
  # for repeats.
  ex = _examples(12)
  widths = {min(b for b in (4, 8, 12, 16) if b >= bucketing.lengths(ex["encoder_input_tokens"][i:i + 4]).max())
            for i in range(0, 12, 4)}
  assert cut._score._cache_size() == len(widths) and plain._score._cache_size() == 1
  want, got = dict(plain.predict_fn(ds)), dict(cut.predict_fn(ds))
  assert all(np.array_equal(want[i], got[i]) for i in range(12))


def test_trainer_refuses_bad_buckets_before_writing_anything(tmp_path):
  with pytest.raises(UserError, match=r"BUCKETS \(LengthBuckets.inputs\)=\[4, 8\] does not cover"):
    toy_train(tmp_path / "run", 2, files=(
        "models/t5_1_1_toy_prompt.gin", "runs/prompt_finetune.gin", "runs/length_buckets.gin"),
        extra=["BUCKETS = [4, 8]"])
  assert not (tmp_path / "run").exists()
