"""Tiny synthetic SeqIO tasks with a byte vocabulary: smoke runs and tests, no files needed.

`toy_parity`: inputs are digit strings, the target is `even` or `odd` (of the
last digit). Learnable, deterministic, and small enough for a CPU test.
`toy_first_parity` asks the same of the first digit, and `toy_mixture` mixes
the two (multi-task prompts: the same inputs, so only the prompt tells the task).
`toy_long_parity` is `toy_parity` on 2-125 digits (inputs of 3-126 tokens with
EOS), for length bucketing.
"""
import functools

import numpy as np
import seqio
import tensorflow as tf

VOCABULARY = seqio.ByteVocabulary()
OUTPUT_FEATURES = {
    "inputs": seqio.Feature(VOCABULARY, add_eos=True),
    "targets": seqio.Feature(VOCABULARY, add_eos=True),
}
SPLIT_SIZES = {"train": 512, "validation": 32, "test": 32}


def parity_examples(split: str, seed: int = 0, position: int = -1, max_digits: int = 6):
  """(inputs, targets) strings of one split, fixed by `split` and `seed`; the parity of
  the digit at `position` of 2 to `max_digits` digits."""
  rng = np.random.default_rng([seed, list(SPLIT_SIZES).index(split)])
  for _ in range(SPLIT_SIZES[split]):
    digits = "".join(str(d) for d in rng.integers(0, 10, size=rng.integers(2, max_digits + 1)))
    yield digits, ("even" if int(digits[position]) % 2 == 0 else "odd")


def _dataset_fn(split: str, shuffle_files: bool, seed=None, position: int = -1,
                max_digits: int = 6) -> tf.data.Dataset:
  del shuffle_files, seed
  inputs, targets = zip(*parity_examples(split, position=position, max_digits=max_digits))
  return tf.data.Dataset.from_tensor_slices({"inputs": list(inputs), "targets": list(targets)})


def _first_digit_dataset_fn(split: str, shuffle_files: bool, seed=None) -> tf.data.Dataset:
  return _dataset_fn(split, shuffle_files, seed, position=0)


def accuracy(targets, predictions):
  return {"accuracy": 100.0 * float(np.mean([t == p for t, p in zip(targets, predictions)]))}


def _empty_dataset_fn(split: str, shuffle_files: bool, seed=None) -> tf.data.Dataset:
  del split, shuffle_files, seed
  return tf.data.Dataset.from_tensor_slices({"inputs": [""], "targets": [""]}).take(0)


def _register(name: str, dataset_fn, sizes=SPLIT_SIZES) -> None:
  if name not in seqio.TaskRegistry.names():
    seqio.TaskRegistry.add(
        name, source=seqio.FunctionDataSource(dataset_fn, splits=tuple(SPLIT_SIZES),
                                              num_input_examples=sizes),
        preprocessors=[seqio.preprocessors.tokenize, seqio.preprocessors.append_eos],
        output_features=OUTPUT_FEATURES, metric_fns=[accuracy])


_register("toy_empty", _empty_dataset_fn, sizes=None)  # the trainer's error for empty data
_register("toy_parity", _dataset_fn)
_register("toy_first_parity", _first_digit_dataset_fn)
_register("toy_long_parity", functools.partial(_dataset_fn, max_digits=125))

if "toy_mixture" not in seqio.MixtureRegistry.names():
  seqio.MixtureRegistry.add("toy_mixture", ["toy_parity", "toy_first_parity"], default_rate=1.0)
