"""`prompt-tuning score` / `generate` on a tiny random backbone with the real T5 vocabulary."""
import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from prompt_tuning.cli import main
from prompt_tuning.io.backbone import save_backbone
from prompt_tuning.models import decoding
from prompt_tuning.models.config import T5Config
from prompt_tuning.models.t5 import T5

EXAMPLES = [
    {"inputs": "Is the sky blue?", "targets": "yes", "id": 0},
    {"inputs": "A much longer question that needs more than eight tokens to write down?",
     "targets": "no, not really", "id": 1},
    {"inputs": "", "targets": "empty inputs still get an EOS"},
    {"inputs": "ünïcödé ☃", "targets": ""},
    {"inputs": "last one", "targets": "ok"},
]


def _random_params(model, seed=0):
  """Random parameters drawn in numpy (compiling `model.init` is slow on CPU)."""
  tokens = jnp.ones((1, 4), jnp.int32)
  shapes = nn.unbox(jax.eval_shape(model.init, jax.random.PRNGKey(0), tokens, tokens)["params"])
  rng = np.random.default_rng(seed)
  return jax.tree_util.tree_map(
      lambda s: (rng.normal(size=s.shape) / np.sqrt(s.shape[0] if len(s.shape) == 2 else 1))
      .astype(np.float32), shapes)


@pytest.fixture(scope="module")
def backbone(tmp_path_factory):
  """A converted-backbone folder holding a tiny random T5 with T5's 32128-row vocabulary."""
  config = T5Config(vocab_size=32128, emb_dim=8, num_heads=2, head_dim=4, mlp_dim=16,
                    num_encoder_layers=1, num_decoder_layers=1,
                    relative_attention_num_buckets=8, relative_attention_max_distance=16)
  model = T5(config)
  params = _random_params(model)
  path = tmp_path_factory.mktemp("cli") / "backbone"
  save_backbone(str(path), config, params, source={"kind": "random test model"})
  return str(path), model, params



def _write_jsonl(path, examples):
  path.write_text("".join(json.dumps(e) + "\n" for e in examples))
  return str(path)


def _run(argv, capsys):
  """Runs the CLI in-process; returns (exit code, stdout, stderr)."""
  with pytest.raises(SystemExit) as exit_info:
    main(argv)
  out, err = capsys.readouterr()
  return exit_info.value.code, out, err


def _sp_tokens(vocab, text):
  """Token ids straight from SentencePiece, EOS (1) appended: independent of seqio."""
  import sentencepiece
  processor = sentencepiece.SentencePieceProcessor(model_file=vocab)
  return processor.encode(text) + [1]


def test_score_equals_direct_log_likelihood(backbone, vocab, tmp_path, capsys):
  path, model, params = backbone
  inputs_file = _write_jsonl(tmp_path / "in.jsonl", EXAMPLES)
  code, out, _ = _run(["score", "--checkpoint", path, "--vocab", vocab,
                       "--inputs_file", inputs_file, "--batch_size", "2"], capsys)
  assert code == 0
  lines = [json.loads(line) for line in out.splitlines()]
  assert len(lines) == len(EXAMPLES)
  # One direct batch padded to 32 (the command uses length buckets 8/16 and batches of 2):
  # the encoder masks padding, and causal decoding keeps later positions from earlier ones.
  inputs = np.zeros((len(EXAMPLES), 32), np.int32)
  targets = np.zeros((len(EXAMPLES), 32), np.int32)
  for row, example in enumerate(EXAMPLES):
    input_ids = _sp_tokens(vocab, example["inputs"])
    target_ids = _sp_tokens(vocab, example["targets"])
    inputs[row, :len(input_ids)] = input_ids
    targets[row, :len(target_ids)] = target_ids
  decoder_inputs = np.concatenate([np.zeros_like(targets[:, :1]), targets[:, :-1]], axis=1)
  logits = model.apply({"params": params}, jnp.asarray(inputs), jnp.asarray(decoder_inputs))
  token_ll = np.take_along_axis(np.asarray(jax.nn.log_softmax(logits)), targets[..., None], -1)
  for row, (example, line) in enumerate(zip(EXAMPLES, lines)):
    assert {k: line[k] for k in example} == example  # the input object comes back, in order
    length = len(_sp_tokens(vocab, example["targets"]))
    np.testing.assert_allclose(line["log_likelihood"], token_ll[row, :length].sum(), rtol=1e-5)
    assert line["num_target_tokens"] == length


def test_score_writes_output_file(backbone, vocab, tmp_path, capsys):
  path, _, _ = backbone
  inputs_file = _write_jsonl(tmp_path / "in.jsonl", EXAMPLES[:2])
  output = tmp_path / "scores.jsonl"
  code, out, _ = _run(["score", "--checkpoint", path, "--vocab", vocab, "--inputs_file",
                       inputs_file, "--output", str(output)], capsys)
  assert code == 0 and out == ""
  lines = [json.loads(line) for line in output.read_text().splitlines()]
  assert [line["id"] for line in lines] == [0, 1]
  assert all(line["log_likelihood"] < 0 for line in lines)


def test_generate_greedy_equals_direct_decoding(backbone, vocab, tmp_path, capsys):
  import sentencepiece
  path, model, params = backbone
  processor = sentencepiece.SentencePieceProcessor(model_file=vocab)
  examples = [{"inputs": e["inputs"]} for e in EXAMPLES[1:4]]
  inputs_file = _write_jsonl(tmp_path / "in.jsonl", examples)
  code, out, _ = _run(["generate", "--checkpoint", path, "--vocab", vocab, "--inputs_file",
                       inputs_file, "--max_decode_length", "5", "--batch_size", "2"], capsys)
  assert code == 0
  lines = [json.loads(line) for line in out.splitlines()]
  # One batch padded to 32 (the command uses length buckets 8 and 16, batch 2 plus filler rows).
  inputs = np.zeros((len(examples), 32), np.int32)
  for row, example in enumerate(examples):
    tokens = _sp_tokens(vocab, example["inputs"])
    inputs[row, :len(tokens)] = tokens
  expected = np.asarray(decoding.generate(model, params, jnp.asarray(inputs),
                                          max_decode_length=5)[0])
  for example, line, tokens in zip(examples, lines, expected):
    assert line["inputs"] == example["inputs"]
    length = decoding.sequence_lengths(tokens)
    # Ids past the 32,000 SentencePiece pieces (sentinels, padding rows) decode as unk.
    ids = [t if t < processor.get_piece_size() else processor.unk_id() for t in tokens[:length]]
    assert line["prediction"] == processor.decode(ids)


@pytest.mark.parametrize("flags", [["--beam_size", "3", "--alpha", "0.6"],
                                   ["--temperature", "0.7", "--topk", "5", "--seed", "1"]])
def test_generate_beam_and_sampling_run_end_to_end(backbone, vocab, tmp_path, capsys, flags):
  path, _, _ = backbone
  short = [EXAMPLES[0], EXAMPLES[4]]  # one length bucket: one compilation
  inputs_file = _write_jsonl(tmp_path / "in.jsonl", short)
  code, out, _ = _run(["generate", "--checkpoint", path, "--vocab", vocab, "--inputs_file",
                       inputs_file, "--max_decode_length", "4", *flags], capsys)
  assert code == 0
  lines = [json.loads(line) for line in out.splitlines()]
  assert [line["inputs"] for line in lines] == [e["inputs"] for e in short]
  assert all(isinstance(line["prediction"], str) for line in lines)


@pytest.mark.parametrize("command", ["score", "generate"])
@pytest.mark.parametrize("case, content, expected", [
    ("empty", "\n\n", "has no examples"),
    ("bad_json", '{"inputs": "a", "targets": "b"}\n{"inputs": "a", \n', "line 2 is not valid JSON"),
    ("missing_key", '{"targets": "b"}\n', "line 1 lacks key(s) ['inputs'"),
    ("not_object", '["inputs", "targets"]\n', "line 1 is a JSON array"),
])
def test_bad_inputs_file_is_one_line_error(backbone, tmp_path, capsys, command, case, content,
                                           expected):
  path, _, _ = backbone
  inputs_file = tmp_path / f"{case}.jsonl"
  inputs_file.write_text(content)
  code, out, err = _run([command, "--checkpoint", path, "--vocab", "unused.model",
                         "--inputs_file", str(inputs_file)], capsys)
  assert code == 2 and out == ""
  assert err.count("\n") == 1 and err.startswith("error: ") and expected in err


def test_missing_vocab_checkpoint_and_conflicting_flags(backbone, tmp_path, capsys):
  path, _, _ = backbone
  inputs_file = _write_jsonl(tmp_path / "in.jsonl", EXAMPLES[:1])
  cases = [
      (["score", "--checkpoint", path, "--vocab", str(tmp_path / "no.model")], "no.model"),
      (["score", "--checkpoint", str(tmp_path / "nowhere"), "--vocab", "x"], "nowhere"),
      (["generate", "--checkpoint", str(tmp_path), "--vocab", "x"], "config.json"),
      (["generate", "--checkpoint", path, "--vocab", "x", "--beam_size", "2",
        "--temperature", "1"], "not both"),
      (["score", "--checkpoint", path, "--vocab", "x", "--batch_size", "0"], "--batch_size"),
  ]
  for argv, expected in cases:
    code, out, err = _run(argv + ["--inputs_file", inputs_file], capsys)
    assert code == 2 and out == "", argv
    assert err.count("\n") == 1 and expected in err, (argv, err)


def test_wrong_vocabulary_for_the_model_is_one_line_error(tmp_path, vocab, capsys):
  # A model whose embedding table is smaller than the vocabulary's ids.
  config = T5Config(vocab_size=100, emb_dim=8, num_heads=2, head_dim=4, mlp_dim=16,
                    num_encoder_layers=1, num_decoder_layers=1)
  path = str(tmp_path / "small_vocab_backbone")
  save_backbone(path, config, _random_params(T5(config)))
  inputs_file = _write_jsonl(tmp_path / "in.jsonl", EXAMPLES[:1])
  code, _, err = _run(["score", "--checkpoint", path, "--vocab", vocab,
                       "--inputs_file", inputs_file], capsys)
  assert code == 2 and "vocab_size is 100" in err and err.count("\n") == 1
