"""Tiny synthetic SeqIO tasks with a byte vocabulary: smoke runs and tests, no files needed.

`toy_parity`: inputs are digit strings, the target is `even` or `odd` (of the
last digit). Learnable, deterministic, and small enough for a CPU test.
"""
import numpy as np
import seqio
import tensorflow as tf

VOCABULARY = seqio.ByteVocabulary()
OUTPUT_FEATURES = {
    "inputs": seqio.Feature(VOCABULARY, add_eos=True),
    "targets": seqio.Feature(VOCABULARY, add_eos=True),
}
SPLIT_SIZES = {"train": 512, "validation": 32, "test": 32}


def parity_examples(split: str, seed: int = 0):
  """(inputs, targets) strings of one split, fixed by `split` and `seed`."""
  rng = np.random.default_rng([seed, list(SPLIT_SIZES).index(split)])
  for _ in range(SPLIT_SIZES[split]):
    digits = "".join(str(d) for d in rng.integers(0, 10, size=rng.integers(2, 7)))
    yield digits, ("even" if int(digits[-1]) % 2 == 0 else "odd")


def _dataset_fn(split: str, shuffle_files: bool, seed=None) -> tf.data.Dataset:
  del shuffle_files, seed
  inputs, targets = zip(*parity_examples(split))
  return tf.data.Dataset.from_tensor_slices({"inputs": list(inputs), "targets": list(targets)})


def accuracy(targets, predictions):
  return {"accuracy": 100.0 * float(np.mean([t == p for t, p in zip(targets, predictions)]))}


def _empty_dataset_fn(split: str, shuffle_files: bool, seed=None) -> tf.data.Dataset:
  del split, shuffle_files, seed
  return tf.data.Dataset.from_tensor_slices({"inputs": [""], "targets": [""]}).take(0)


if "toy_empty" not in seqio.TaskRegistry.names():
  # An empty dataset, to test the trainer's error for it.
  seqio.TaskRegistry.add(
      "toy_empty",
      source=seqio.FunctionDataSource(_empty_dataset_fn, splits=tuple(SPLIT_SIZES)),
      preprocessors=[seqio.preprocessors.tokenize, seqio.preprocessors.append_eos],
      output_features=OUTPUT_FEATURES, metric_fns=[accuracy])

if "toy_parity" not in seqio.TaskRegistry.names():
  seqio.TaskRegistry.add(
      "toy_parity",
      source=seqio.FunctionDataSource(_dataset_fn, splits=tuple(SPLIT_SIZES),
                                      num_input_examples=SPLIT_SIZES),
      preprocessors=[seqio.preprocessors.tokenize, seqio.preprocessors.append_eos],
      output_features=OUTPUT_FEATURES,
      metric_fns=[accuracy])
