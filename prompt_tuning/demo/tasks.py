"""The demo's synthetic corpus: instruction-prefixed digit tasks, registered as SeqIO tasks.

Pretraining sees `copy:3141 -> 3141`, `reverse:3141 -> 1413`, `sort:3141 ->
1134`. The tuned task (`demo_bare_<task>`) shows the same digits WITHOUT the
instruction word, so a frozen backbone cannot know which operation is wanted:
only the soft prompt can tell it.

Held-out digit strings are chosen by a hash of the string, so no validation
or test input of any task is ever seen in training, pretraining included; the
test split is disjoint from the validation split, so a number chosen on
validation can be reported on test. `demo_bare_<task>_train<N>` keeps only the
first N training examples (the few-shot experiments). `demo_bare_max` (the
largest digit; never pretrained) is a classification whose label words are the
digits, for the class-label prompt initializer.
"""
import zlib
from typing import Callable, Dict, Iterator, List, Sequence, Tuple

import numpy as np
import seqio
import tensorflow as tf

VOCABULARY = seqio.ByteVocabulary()
OUTPUT_FEATURES = {
    "inputs": seqio.Feature(VOCABULARY, add_eos=True),
    "targets": seqio.Feature(VOCABULARY, add_eos=True),
}
OPERATIONS: Dict[str, Callable[[str], str]] = {
    "copy": lambda s: s,
    "reverse": lambda s: s[::-1],
    "sort": lambda s: "".join(sorted(s)),
}
# Operations the backbone never sees in pretraining, tuned bare (`demo_bare_increment`): a
# frozen backbone cannot do them from any instruction, so how much a method can learn shows
# (the budget sweep, `prompt-tuning sweep`).
NOVEL_OPERATIONS: Dict[str, Callable[[str], str]] = {
    "increment": lambda s: "".join(str((int(c) + 1) % 10) for c in s),
    "rotate": lambda s: s[1:] + s[:1],
}
# Classification with label words (the digits): the prompt initializer comparison needs a task
# whose class labels the backbone's vocabulary has pretrained embeddings for (class-label init).
CLASSIFICATION_OPERATIONS: Dict[str, Callable[[str], str]] = {
    "max": max,
}
LABEL_WORDS = tuple("0123456789")
MIN_DIGITS, MAX_DIGITS = 3, 6
HELD_OUT_BUCKETS = 8  # 1 in HELD_OUT_BUCKETS digit strings is reserved for validation
SPLIT_SIZES = {"train": 20000, "validation": 256, "test": 256}
PRETRAIN_MIXTURE = "demo_pretrain"
FEW_SHOT_SIZES = (16, 64, 256)


def is_held_out(digits: str) -> bool:
  """Deterministic train/validation partition of the input space."""
  return zlib.crc32(digits.encode()) % HELD_OUT_BUCKETS == 0


def digit_strings(split: str, count: int, seed: int) -> Iterator[str]:
  """`count` random digit strings that belong to `split` (train excludes held-out ones)."""
  rng = np.random.default_rng([seed, list(SPLIT_SIZES).index(split)])
  want_held_out = split != "train"
  produced = 0
  while produced < count:
    digits = "".join(map(str, rng.integers(0, 10, size=rng.integers(MIN_DIGITS, MAX_DIGITS + 1))))
    if is_held_out(digits) == want_held_out:
      produced += 1
      yield digits


def examples(operation: str, split: str, instruction: bool, seed: int = 0
             ) -> List[Tuple[str, str]]:
  """(inputs, targets) of one task split, e.g. ('reverse:314', '413')."""
  op = {**OPERATIONS, **NOVEL_OPERATIONS, **CLASSIFICATION_OPERATIONS}[operation]
  # A different stream per operation, so tasks do not share their inputs one to one (new
  # operations go at the end: the earlier tasks keep their data).
  order = sorted(OPERATIONS) + sorted(NOVEL_OPERATIONS) + sorted(CLASSIFICATION_OPERATIONS)
  stream = seed * 1000 + order.index(operation)
  prefix = f"{operation}:" if instruction else ""
  if split == "test":  # held-out strings that the validation split does not contain
    seen = set(digit_strings("validation", SPLIT_SIZES["validation"], stream))
    fresh = (d for d in digit_strings("test", 4 * SPLIT_SIZES["test"], stream) if d not in seen)
    digits = [d for _, d in zip(range(SPLIT_SIZES["test"]), dict.fromkeys(fresh))]
  else:
    digits = list(digit_strings(split, SPLIT_SIZES[split], stream))
  return [(prefix + d, op(d)) for d in digits]


def exact_match(targets: Sequence[str], predictions: Sequence[str]) -> Dict[str, float]:
  """Fraction (0-1) of predictions equal to their target string."""
  return {"exact_match": float(np.mean([t == p for t, p in zip(targets, predictions)]))}


def task_name(operation: str, instruction: bool = True) -> str:
  return f"demo_{operation}" if instruction else f"demo_bare_{operation}"


def few_shot_task_name(operation: str, train_examples: int) -> str:
  return f"{task_name(operation, False)}_train{train_examples}"


def _register(name: str, operation: str, instruction: bool, train_examples: int = None) -> None:
  sizes = dict(SPLIT_SIZES, **({"train": train_examples} if train_examples else {}))

  def dataset_fn(split: str, shuffle_files: bool, seed=None) -> tf.data.Dataset:
    del shuffle_files, seed
    inputs, targets = zip(*examples(operation, split, instruction)[:sizes[split]])
    return tf.data.Dataset.from_tensor_slices({"inputs": list(inputs), "targets": list(targets)})

  seqio.TaskRegistry.add(
      name,
      source=seqio.FunctionDataSource(dataset_fn, splits=tuple(sizes), num_input_examples=sizes),
      preprocessors=[seqio.preprocessors.tokenize, seqio.preprocessors.append_eos],
      output_features=OUTPUT_FEATURES,
      metric_fns=[exact_match])


def register() -> None:
  """Registers every demo task and the pretraining mixture (idempotent)."""
  for operation in OPERATIONS:
    for instruction in (True, False):
      name = task_name(operation, instruction)
      if name not in seqio.TaskRegistry.names():
        _register(name, operation, instruction)
    for size in FEW_SHOT_SIZES:
      name = few_shot_task_name(operation, size)
      if name not in seqio.TaskRegistry.names():
        _register(name, operation, False, train_examples=size)
  for operation in NOVEL_OPERATIONS:
    name = task_name(operation, instruction=False)
    if name not in seqio.TaskRegistry.names():
      _register(name, operation, instruction=False)
  for operation in CLASSIFICATION_OPERATIONS:
    for size in (None, *FEW_SHOT_SIZES):
      name = few_shot_task_name(operation, size) if size else task_name(operation, False)
      if name not in seqio.TaskRegistry.names():
        _register(name, operation, False, train_examples=size)
  if PRETRAIN_MIXTURE not in seqio.MixtureRegistry.names():
    seqio.MixtureRegistry.add(PRETRAIN_MIXTURE, [task_name(op) for op in OPERATIONS],
                              default_rate=1.0)


register()
