"""Every registered task yields model batches through seqio.get_dataset.

TFDS is mocked with random examples (no network); the byte vocabulary stands
in for SentencePiece so the suite needs no vocabulary file (one test uses the
real T5 vocabulary: test_tasks_registry.py).
"""
import json

import pytest
import seqio

from prompt_tuning import tasks
from prompt_tuning.tasks import testing

LENGTHS = {"inputs": 24, "targets": 16}  # bytes: fits every label name + EOS
MODEL_FEATURES = {"encoder_input_tokens", "decoder_input_tokens", "decoder_target_tokens",
                  "decoder_loss_weights"}


@pytest.fixture(scope="module")
def byte_vocab(tmp_path_factory):
  """Random TFDS data, byte vocabulary, and Rotten Tomatoes files on disk."""
  data_dir = tmp_path_factory.mktemp("data")
  folder = data_dir / "rotten_tomatoes"
  folder.mkdir()
  for split in ("train", "validation", "test"):
    rows = [{"text": "a gorgeous film", "label": 1}, {"text": "tedious", "label": 0}]
    (folder / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
  mp = pytest.MonkeyPatch()
  mp.setenv("PROMPT_TUNING_DATA_DIR", str(data_dir))
  with testing.mock_tfds_rows({}, num_random_examples=2), testing.byte_vocabulary() as vocab:
    yield vocab
  mp.undo()


def _eval_split(info) -> str:
  return "validation" if "validation" in info.splits else "test"


@pytest.mark.parametrize("name", sorted(tasks.TASKS))
def test_task_yields_batches(byte_vocab, name):
  info = tasks.TASKS[name]
  ds = seqio.get_dataset(name, task_feature_lengths=LENGTHS, dataset_split=_eval_split(info),
                         shuffle=False, num_epochs=1, batch_size=2,
                         # Lengths are trimmed by seqio already; skipping the
                         # converter's re-check halves the graph tracing time.
                         feature_converter=seqio.EncDecFeatureConverter(
                             pack=False, apply_length_check=False))
  batch = next(ds.as_numpy_iterator())
  assert set(batch) == MODEL_FEATURES
  assert batch["encoder_input_tokens"].shape == (2, LENGTHS["inputs"])
  assert batch["decoder_target_tokens"].shape == (2, LENGTHS["targets"])
  eos = byte_vocab.eos_id
  for inputs, targets in zip(batch["encoder_input_tokens"], batch["decoder_target_tokens"]):
    assert inputs[0] not in (0, eos) and targets[0] not in (0, eos)  # non-empty texts
    if info.label_names:
      assert byte_vocab.decode(targets.tolist()) in info.label_names


def test_rank_eval_dataset_enumerates_every_label(byte_vocab):
  rows = list(seqio.get_mixture_or_task("glue_mnli_rank").source
              .get_dataset("validation", shuffle=False).as_numpy_iterator())
  assert len(rows) == 2 * 3
  for i in range(2):
    group = rows[3 * i:3 * i + 3]
    assert [r["idx"] for r in group] == [i] * 3
    assert [r["targets"].decode() for r in group] == ["entailment", "neutral", "contradiction"]
    assert sum(bool(r["is_correct"]) for r in group) == 1
