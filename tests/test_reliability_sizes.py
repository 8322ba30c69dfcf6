"""Issue 28, class 1: sizes taken from input are bounded before anything is allocated.

An array header is checked against the bytes that follow it; the largest pass a
command would run (inputs, targets, decode length, beams, batch) against the
machine's memory (`models.memory_bound`, whose `machine_bytes` is pinned to
16 GiB here so the outcome does not depend on the machine); seeds against the
32 bits JAX keeps; a planned mesh against the batch. Each is one `error:` line
and leaves the prepared files as they were.
"""
import zipfile

import numpy as np
import pytest

from prompt_tuning.commands import score as score_command
from prompt_tuning.errors import UserError
from prompt_tuning.models import memory_bound
from tests.reliability_helpers import (evaluate, export, generate, is_one_line_refusal, plan,
                                       run_cli, score, train, one_error_line)

GIB = 2 ** 30


@pytest.fixture
def sixteen_gib(monkeypatch):
  monkeypatch.setattr(memory_bound, "machine_bytes", lambda: (16 * GIB, "this host"))


def _header(shape, descr="<f4") -> bytes:
  import io
  out = io.BytesIO()
  np.lib.format.write_array_header_1_0(out, {"descr": descr, "fortran_order": False,
                                            "shape": shape})
  return out.getvalue()


# (name, header's shape, dtype, bytes of data that follow it)
LYING_HEADERS = [
    ("claims_119_gib", (10 ** 9, 32), "<f4", 64),
    ("claims_2_to_the_80", (2 ** 40, 2 ** 40), "<f8", 0),
    ("truncated", (3, 32), "<f4", 3 * 32 * 4 - 10),
    ("padded", (3, 32), "<f4", 3 * 32 * 4 + 10),
    ("wrong_dtype_size", (3, 32), "<f8", 3 * 32 * 4),
]


@pytest.mark.parametrize("name, shape, descr, data", LYING_HEADERS,
                         ids=[c[0] for c in LYING_HEADERS])
def test_an_npy_header_is_checked_against_the_file_before_reading(prepared, tmp_path, name, shape,
                                                                  descr, data, capsys):
  lying = tmp_path / f"{name}.npy"
  lying.write_bytes(_header(shape, descr) + b"\0" * data)
  for argv in (export("--prompt", str(lying), "--output", str(tmp_path / "out")),
               evaluate(f"--gin.PROMPT_FILE='{lying}'"), score("--prompt", str(lying))):
    line = is_one_line_refusal(argv(prepared), prepared, capsys, (str(lying), "damaged .npy"))
    assert f"{tuple(shape)}" in line, line


def test_an_npz_entry_is_checked_against_its_size(tmp_path):
  from prompt_tuning.train.checkpoints import load_tree, save_tree
  good = tmp_path / "trainable.npz"
  save_tree(str(good), {"prompt": {"prompt": np.ones((3, 4), np.float32)}})
  assert load_tree(str(good))["prompt"]["prompt"].shape == (3, 4)
  for name, entry in [("lying", _header((10 ** 9, 4)) + b"\0" * 48),
                      ("truncated", _header((3, 4)) + b"\0" * 40)]:
    bad = tmp_path / f"{name}.npz"
    with zipfile.ZipFile(bad, "w") as archive:
      archive.writestr("prompt/prompt.npy", entry)
    with pytest.raises(UserError, match=f"{bad}.*damaged"):
      load_tree(str(bad))
  flipped = bytearray(good.read_bytes())  # a changed byte of the data: the zip's CRC
  flipped[flipped.index(b"\x00\x00\x80\x3f") + 3] ^= 0x40
  (tmp_path / "flipped.npz").write_bytes(bytes(flipped))
  with pytest.raises(UserError, match="damaged"):
    load_tree(str(tmp_path / "flipped.npz"))


# ---- the largest pass against the machine's memory ------------------------------------------


def _inputs(tmp_path, words: int):
  path = tmp_path / "long.jsonl"
  path.write_text('{"inputs": "short", "targets": "yes"}\n'
                  + '{"inputs": "' + "word " * words + '", "targets": "yes"}\n')
  return str(path)


@pytest.mark.parametrize("flags, needles", [
    ((), ("example 2 of", "input tokens", "--max_input_length")),
    (("--batch_size", "100000000"), ("--batch_size",)),
], ids=["a_20000_word_input", "a_batch_of_a_hundred_million"])
def test_score_refuses_a_pass_that_cannot_fit_before_loading(prepared, tmp_path, vocab, flags,
                                                             needles, sixteen_gib, capsys):
  words = 20000 if not flags else 3
  argv = score("--inputs_file", _inputs(tmp_path, words), "--vocab", vocab, *flags)(prepared)
  line = is_one_line_refusal(argv, prepared, capsys, ("needs at least", "16.0 GiB", *needles))
  assert "GiB of memory" in line


@pytest.mark.parametrize("flags, needles", [
    (("--max_decode_length", "100000000"), ("100,000,000", "--max_decode_length")),
    (("--beam_size", "100000"), ("100,000 beams", "--beam_size")),
], ids=["decode_length", "beams"])
def test_generate_refuses_decoding_that_cannot_fit(prepared, tmp_path, vocab, flags, needles,
                                                   sixteen_gib, capsys):
  argv = generate("--inputs_file", _inputs(tmp_path, 3), "--vocab", vocab, *flags)(prepared)
  is_one_line_refusal(argv, prepared, capsys, ("needs at least", *needles))


def test_max_input_length_truncates_as_t5x_does_with_one_warning(prepared, tmp_path, vocab,
                                                                sixteen_gib, capsys):
  argv = score("--inputs_file", _inputs(tmp_path, 20000), "--vocab", vocab,
               "--max_input_length", "512")(prepared)
  code, err = run_cli(argv, capsys)
  # The memory bound passes; the prepared backbone's 128-token vocabulary then refuses T5's ids.
  one_error_line(code, err, ("vocab_size is 128",), ("needs at least",))
  warnings = [line for line in err.splitlines() if line.startswith("warning:")]
  assert len(warnings) == 1 and "1 of 2 inputs" in warnings[0] and "512" in warnings[0]


def test_truncation_keeps_eos_last_and_leaves_short_inputs_alone(capsys):
  inputs = [[5, 6, 1], list(range(2, 12)) + [1]]
  assert score_command.truncated_inputs(inputs, None, "f") is inputs
  assert score_command.truncated_inputs(inputs, 4, "f") == [[5, 6, 1], [2, 3, 4, 1]]
  assert "1 of 2 inputs of f" in capsys.readouterr().err


@pytest.mark.parametrize("argv, needles", [
    (train("--gin.TASK_FEATURE_LENGTHS={'inputs': 1000000, 'targets': 8}"),
     ("TASK_FEATURE_LENGTHS", "1000000", "BATCH_SIZE")),
    (train("--gin.TASK_FEATURE_LENGTHS={'inputs': 16, 'targets': 100000000}"),
     ("100000000",)),
    (evaluate("--gin.TASK_FEATURE_LENGTHS={'inputs': 16, 'targets': 100000000}"),
     ("decoding TASK_FEATURE_LENGTHS",)),
], ids=["train_inputs", "train_targets", "eval_decode"])
def test_feature_lengths_are_bounded_before_any_data_is_read(prepared, argv, needles, sixteen_gib,
                                                             capsys):
  is_one_line_refusal(argv(prepared), prepared, capsys, ("needs at least", *needles))


def test_bench_sizes_are_bounded(sixteen_gib, capsys):
  code, err = run_cli(["bench", "--inputs_length", "10000000"], capsys)
  one_error_line(code, err, ("the timed step", "--inputs_length"))


@pytest.mark.parametrize("shape", [
    memory_bound.Pass(8, 256, 8), memory_bound.Pass(4, 16, 512), memory_bound.Pass(2, 8, 8),
    memory_bound.Pass(4, 8, 512, decoding=True), memory_bound.Pass(2, 8, 256, True, copies=4),
], ids=["long_inputs", "long_targets", "small", "decoding", "beams"])
def test_the_bound_is_below_what_xla_allocates_for_the_pass(shape):
  """The bound never refuses a pass that fits: XLA's own buffers for it are larger."""
  import jax
  import jax.numpy as jnp
  from prompt_tuning.models import decoding
  from prompt_tuning.models.config import T5Config
  from prompt_tuning.models.t5 import T5
  config = T5Config(vocab_size=128, emb_dim=32, num_heads=4, head_dim=8, mlp_dim=64,
                    num_encoder_layers=2, num_decoder_layers=2)
  model = T5(config)
  tokens = jnp.ones((1, 4), jnp.int32)
  params = jax.eval_shape(model.init, jax.random.PRNGKey(0), tokens, tokens)
  inputs = jax.ShapeDtypeStruct((shape.batch, shape.encoder_length), jnp.int32)
  if shape.decoding:
    run = jax.jit(lambda p, e: decoding.generate(model, p["params"], e, beam_size=shape.copies,
                                                 max_decode_length=shape.decoder_length))
    lowered = run.lower(params, inputs)
  else:
    targets = jax.ShapeDtypeStruct((shape.batch, shape.decoder_length), jnp.int32)
    lowered = jax.jit(model.apply).lower(params, inputs, targets)
  used = lowered.compile().memory_analysis()
  allocated = used.temp_size_in_bytes + used.output_size_in_bytes + used.argument_size_in_bytes
  assert 0 < memory_bound.lower_bound_bytes(config, shape) <= allocated
  memory_bound.check_fits(config, shape, "x", "y", limit=allocated)
  with pytest.raises(UserError, match="needs at least"):
    memory_bound.check_fits(config, shape, "x", "y", limit=allocated // 100)


# ---- seeds and meshes ------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [2 ** 70, 2 ** 32, -1, 1.5, "'7'"])
def test_a_seed_jax_would_truncate_is_refused(prepared, seed, capsys):
  is_one_line_refusal(train(f"--gin.RANDOM_SEED={seed}")(prepared), prepared, capsys,
                      ("RANDOM_SEED", "2**32 - 1"))


def test_generate_seed_is_bounded_like_the_run_seed(prepared, capsys):
  for seed in (str(2 ** 64), "-1"):
    is_one_line_refusal(generate("--seed", seed)(prepared), prepared, capsys, ("--seed",))


@pytest.mark.parametrize("flags, needles", [
    (("--num_devices=1000000000",), ("BATCH_SIZE=8", "1,000,000,000 data-parallel shards")),
    (("--num_devices=16",), ("BATCH_SIZE=8", "16 data-parallel shards")),
    (("--num_devices=2", "--gin.train.num_microbatches=8"), ("8 microbatches over 2",)),
    (("--num_devices=4", "--gin.make_mesh.model_parallel_size=8"), ("does not divide",)),
], ids=["a_billion_devices", "more_shards_than_examples", "microbatches", "model_axis"])
def test_plan_checks_its_mesh_against_the_batch_as_the_trainer_does(prepared, flags, needles,
                                                                    capsys):
  is_one_line_refusal(plan(*flags)(prepared), prepared, capsys, needles)


def test_plan_of_a_mesh_the_batch_splits_over_is_printed(prepared, capsys):
  code, err = run_cli(plan("--num_devices=8")(prepared), capsys)
  assert code == 0, err
