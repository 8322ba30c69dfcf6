"""The real T5X checkpoint of ../shared: convert + score through the CLI, and prompt-tune on it."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from prompt_tuning.cli import main
from prompt_tuning.io.t5x import load_t5x
from prompt_tuning.models import losses
from prompt_tuning.models.t5 import T5
from tests.train_helpers import toy_train

EXAMPLES = [{"inputs": "Is the sky blue?", "targets": "yes"},
            {"inputs": "premise: A dog runs. hypothesis: An animal moves.", "targets": "entailment"}]


@pytest.fixture
def checkpoint(shared_data):
  return str(shared_data / "t5x_t5_1_1_tiny" / "checkpoint_3")


@pytest.mark.slow
def test_convert_then_score_equals_a_direct_computation(checkpoint, shared_data, tmp_path, capsys):
  vocab = str(shared_data / "t5_vocab" / "sentencepiece.model")
  backbone = tmp_path / "backbone"
  with pytest.raises(SystemExit) as done:
    main(["convert", "--from", "t5x", "--input", checkpoint, "--output", str(backbone)])
  assert done.value.code == 0
  inputs = tmp_path / "in.jsonl"
  inputs.write_text("".join(json.dumps(e) + "\n" for e in EXAMPLES))
  capsys.readouterr()
  with pytest.raises(SystemExit) as done:
    main(["score", "--checkpoint", str(backbone), "--vocab", vocab, "--inputs_file", str(inputs)])
  assert done.value.code == 0
  scored = [json.loads(l) for l in capsys.readouterr().out.splitlines()]

  import sentencepiece
  sp = sentencepiece.SentencePieceProcessor(model_file=vocab)
  config, params = load_t5x(checkpoint)
  for example, line in zip(EXAMPLES, scored):
    enc = jnp.asarray([sp.encode(example["inputs"]) + [1]])
    target = jnp.asarray([sp.encode(example["targets"]) + [1]])
    dec = jnp.pad(target[:, :-1], ((0, 0), (1, 0)))
    logits = T5(config).apply({"params": params}, enc, dec)
    want = float(losses.sequence_log_likelihood(logits, target, jnp.ones_like(target))[0])
    assert line["log_likelihood"] == pytest.approx(want, rel=1e-5)
    assert line["log_likelihood"] < 0


@pytest.mark.slow
def test_prompt_tuning_directly_on_the_t5x_checkpoint_keeps_it_frozen(checkpoint, tmp_path):
  # The checkpoint is at step 3; TRAIN_STEPS is absolute, as in T5X: 3 steps of tuning.
  summary = toy_train(tmp_path / "run", steps=6,
                      files=("models/t5_1_1_tiny_prompt.gin", "runs/prompt_finetune.gin"),
                      extra=[f"INITIAL_CHECKPOINT_PATH = '{checkpoint}'", "PROMPT_LENGTH = 3",
                             "train.return_variables = True"])
  _, original = load_t5x(checkpoint)
  frozen = summary["frozen"]["params"]
  for (path, want), got in zip(jax.tree_util.tree_leaves_with_path(original),
                               jax.tree_util.tree_leaves(frozen)):
    np.testing.assert_array_equal(np.asarray(got), want, err_msg=jax.tree_util.keystr(path))
  assert summary["trainable"]["prompt"]["prompt"].shape == (3, 4)
  assert np.isfinite([h["loss"] for h in summary["train_history"]]).all()
  assert [h["step"] for h in summary["train_history"]] == [4, 5, 6]
  assert (tmp_path / "run" / "prompts" / "step_6.npy").exists()
