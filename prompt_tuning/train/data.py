"""SeqIO task/mixture -> per-host numpy batches for the trainer.

Every host reads the same global example stream (same seed, no per-host
shard), forms the same global batches and keeps its contiguous block of rows
(`host_rows`); the partitioner turns the blocks back into global arrays. So
the order of examples, and every global batch, does not depend on the number
of hosts. The order is deterministic for a seed, so a resumed run skips the
batches it already consumed and sees exactly what an uninterrupted run would.
"""
import contextlib
import importlib
from typing import Dict, Iterator, Mapping, Optional, Tuple

import jax
import numpy as np
import seqio

from prompt_tuning import checks
from prompt_tuning.data import bucketing, packing, vocab
from prompt_tuning.errors import UserError, closest

_MODEL_FEATURES = ("encoder_input_tokens", "decoder_input_tokens",
                   "decoder_target_tokens", "decoder_loss_weights")


def import_task_modules(modules) -> None:
  """Imports the modules that register tasks (`MIXTURE_OR_TASK_MODULE`)."""
  if isinstance(modules, str):
    modules = [modules]
  for name in modules or ():
    try:
      importlib.import_module(name)
    except ImportError as e:
      if name.startswith("prompt_tuning.data."):
        raise UserError(f"the reference's task module {name!r} has no counterpart here ({e}); "
                        "its GLUE and SuperGLUE names come with 'prompt_tuning.data.glue' / "
                        "'prompt_tuning.data.super_glue' (or the default 'prompt_tuning.tasks'): "
                        "run `prompt-tuning tasks` for the names") from None
      raise UserError(f"cannot import task module {name!r} ({e}); check MIXTURE_OR_TASK_MODULE") from None


def get_mixture_or_task(name: str, check_vocabulary: bool = True):
  """The registered task or mixture, or a UserError listing close names.

  `check_vocabulary`: also check that its vocabularies can be read (one line
  naming PROMPT_TUNING_VOCAB when the default gs:// one cannot).
  """
  try:
    provider = seqio.get_mixture_or_task(name)
  except ValueError:
    names = list(seqio.TaskRegistry.names()) + list(seqio.MixtureRegistry.names())
    raise UserError(f"no task or mixture named {name!r} is registered.{closest(name, names)} "
                    "Run `prompt-tuning tasks` to list them, or set MIXTURE_OR_TASK_MODULE") from None
  if check_vocabulary:
    vocab.check_vocabularies(provider)
  return provider


def check_split(mixture_or_task_name: str, split, setting: str) -> None:
  """Refuses a split that the task (or every task of the mixture) lacks.

  Args:
    mixture_or_task_name: a registered task or mixture.
    split: the split the run reads.
    setting: how the user chose it, e.g. `EVAL_SPLIT (evaluate.split)`.
  """
  provider = get_mixture_or_task(mixture_or_task_name)
  splits = sorted(provider.splits)
  if split not in splits:
    hint = closest(str(split), splits, n=2)
    raise UserError(f"{mixture_or_task_name} has no split {split!r}; it has "
                    f"{', '.join(splits)}.{hint} Set {setting} to one of them")


def check_data_available(mixture_or_task_name: str, splits) -> None:
  """Fails fast, in one line, when tasks of a run have no data to read.

  A task's split has data when its official file is under the data directory
  (DATA_DIR / $PROMPT_TUNING_DATA_DIR) or its TFDS dataset is prepared. When a
  data directory is set, or when only some tasks of a mixture have data, every
  task must have it: otherwise TFDS would spend minutes retrying downloads of
  the missing ones. Without a data directory and with no task prepared, TFDS
  may still download them (first use with network access).

  Args:
    mixture_or_task_name: a registered task or mixture.
    splits: the splits the run reads (tasks lacking a split are skipped, as seqio does).
  """
  from prompt_tuning.tasks.sources import DATA_DIR_ENV, TextSource, local_data_dir
  # Data only: whether the vocabulary can be read is `get_mixture_or_task`'s check.
  tasks = seqio.get_subtasks(get_mixture_or_task(mixture_or_task_name, check_vocabulary=False))
  checked, missing = 0, []
  for task in tasks:
    if not isinstance(task.source, TextSource):
      continue
    for split in splits:
      if split in task.splits:
        checked += 1
        if not task.source.data_available(split):
          missing.append(f"{task.name} [{split}]")
  if not missing:
    return
  data_dir = local_data_dir()
  if data_dir is None and len(missing) == checked:
    return  # nothing prepared anywhere: TFDS downloads on first use
  where = (f"the data directory {data_dir}" if data_dir
           else f"DATA_DIR (${DATA_DIR_ENV})")
  raise UserError(f"no data for {len(missing)} of {checked} task splits of "
                  f"{mixture_or_task_name}: {', '.join(missing)}; put their official files under "
                  f"{where} or prepare them in TFDS (`tfds build`, --tfds_data_dir), or choose "
                  "tasks that have data")


@contextlib.contextmanager
def readable_data_errors(mixture_or_task_name: str):
  """Turns 'dataset not prepared / not found' failures of TFDS and files into one line."""
  try:
    yield
  except UserError:
    raise
  except (KeyError, FileNotFoundError, OSError, AssertionError) as e:
    first = (str(e).splitlines() or [type(e).__name__])[0].strip("\"' ").rstrip(".")
    raise UserError(f"cannot read the data of {mixture_or_task_name}: {first}. Prepare the TFDS "
                    "dataset (network access or `tfds build`, then TFDS_DATA_DIR), or point "
                    "PROMPT_TUNING_DATA_DIR at the official files") from None
  except Exception as e:  # tf.errors.* and tfds' DatasetNotFoundError share no base we can name
    if type(e).__module__.startswith(("tensorflow", "tensorflow_datasets")):
      first = (str(e).splitlines() or [type(e).__name__])[0]
      raise UserError(f"cannot read the data of {mixture_or_task_name}: {first}. Prepare the "
                      "TFDS dataset (TFDS_DATA_DIR) or set PROMPT_TUNING_DATA_DIR") from None
    raise


def validate_feature_lengths(task_feature_lengths: Mapping[str, int]) -> None:
  """TASK_FEATURE_LENGTHS has positive 'inputs' and 'targets' lengths. The prompt is not
  counted in them: it is added on top of the inputs, as in the reference code, so a
  prompt may be longer than the inputs."""
  example = "--gin.TASK_FEATURE_LENGTHS=\"{'inputs': 512, 'targets': 8}\""
  if not isinstance(task_feature_lengths, Mapping):
    raise UserError(f"TASK_FEATURE_LENGTHS must be a dict, got {task_feature_lengths!r}; "
                    f"set e.g. {example}")
  for key in ("inputs", "targets"):
    if key not in task_feature_lengths:
      raise UserError(f"TASK_FEATURE_LENGTHS lacks {key!r}; set e.g. {example}")
    checks.positive_int(task_feature_lengths[key], f"TASK_FEATURE_LENGTHS[{key!r}]", example)


def converted_dataset(mixture_or_task_name: str, task_feature_lengths: Mapping[str, int],
                      split: str, shuffle: bool, seed: Optional[int], num_epochs: Optional[int],
                      use_cached: bool = False, task_tokens: Optional[Mapping[str, int]] = None):
  """The whole split of a task (every host the same), feature-converted for an encoder-decoder
  (no packing).

  `task_tokens`: `{task: token}` to start each input with (multi-task prompts,
  `data.task_tokens`), or None.
  """
  task = get_mixture_or_task(mixture_or_task_name)
  if split not in task.splits:
    raise UserError(f"{mixture_or_task_name} has no split {split!r}; it has {sorted(task.splits)}")
  source = mixture_or_task_name
  if task_tokens:
    from prompt_tuning.data.task_tokens import marked_provider
    source = marked_provider(task, task_tokens)
  # One shard: the example order must not depend on the number of hosts (`host_rows`).
  ds = seqio.get_dataset(
      source, task_feature_lengths=dict(task_feature_lengths),
      dataset_split=split, shuffle=shuffle, num_epochs=num_epochs, seed=seed,
      use_cached=use_cached, shard_info=seqio.ShardInfo(index=0, num_shards=1),
      feature_converter=seqio.EncDecFeatureConverter(pack=False))
  return ds


def host_rows(global_batch: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
  """This host's contiguous block of a global batch: `[B, ...] -> [B / hosts, ...]`.

  Host `i` of `n` keeps rows `[i * B/n, (i + 1) * B/n)`, the block that
  `jax.make_array_from_process_local_data` places on its devices and that
  `with_example_index` numbers.
  """
  count, index = jax.process_count(), jax.process_index()
  if count == 1:
    return global_batch
  size = len(next(iter(global_batch.values())))
  if size % count:
    raise UserError(f"a global batch of {size} examples does not split over {count} hosts; "
                    f"choose a batch size divisible by {count}")
  rows = size // count
  return {k: v[index * rows:(index + 1) * rows] for k, v in global_batch.items()}


def batches(mixture_or_task_name: str, task_feature_lengths: Mapping[str, int], split: str,
            local_batch_size: int, seed: Optional[int], shuffle: bool = True,
            num_epochs: Optional[int] = None, skip_batches: int = 0,
            use_cached: bool = False, task_tokens: Optional[Mapping[str, int]] = None,
            length_buckets: Optional[bucketing.LengthBuckets] = None
            ) -> Iterator[Dict[str, np.ndarray]]:
  """Endless (by default) iterator of host-local batches of model features.

  The global batches (`local_batch_size * jax.process_count()` examples) are
  the same on every host and for any number of hosts; each host gets its
  rows of them (`host_rows`). `skip_batches` counts global batches.
  `task_tokens`: see `converted_dataset`. `length_buckets` (checked,
  `bucketing.check_buckets`): each global batch is cut to its length buckets
  (`prompt_tuning.data.bucketing`), so every host cuts its rows alike.
  """
  global_batch_size = local_batch_size * jax.process_count()
  with readable_data_errors(mixture_or_task_name):
    ds = converted_dataset(mixture_or_task_name, task_feature_lengths, split, shuffle, seed,
                           num_epochs, use_cached, task_tokens)
    ds = ds.map(lambda ex: {k: ex[k] for k in _MODEL_FEATURES if k in ex})
    if length_buckets is not None:
      iterator = bucketing.bucketed_batches(ds, global_batch_size, length_buckets, seed,
                                            skip_batches)
    else:
      ds = ds.batch(global_batch_size, drop_remainder=True)
      if skip_batches:
        ds = ds.skip(skip_batches)
      iterator = ds.prefetch(2).as_numpy_iterator()
    first = next(iterator, None)
  if first is None:
    raise UserError(f"{mixture_or_task_name} split {split!r} yields no full batch of "
                    f"{global_batch_size} examples (empty dataset?); check the data or lower "
                    "BATCH_SIZE")

  def gen():
    yield host_rows(first)
    for batch in iterator:
      yield host_rows(batch)
  return gen()


def packed_batches(mixture_or_task_name: str, task_feature_lengths: Mapping[str, int], split: str,
                   local_rows: int, seed: Optional[int], layout: packing.PackedLayout,
                   shuffle: bool = True, num_epochs: Optional[int] = None,
                   skip_examples: int = 0, use_cached: bool = False,
                   task_tokens: Optional[Mapping[str, int]] = None
                   ) -> Iterator[Tuple[Dict[str, np.ndarray], int]]:
  """Endless (by default) iterator of (this host's rows of a packed global batch, examples in
  the global batch) (`data/packing.py`).

  The global batch of `local_rows * jax.process_count()` rows is packed from the global
  example stream, the same on every host; `skip_examples` (the data position a checkpoint
  recorded) examples of it were consumed before.
  """
  global_rows = local_rows * jax.process_count()
  with readable_data_errors(mixture_or_task_name):
    ds = converted_dataset(mixture_or_task_name, task_feature_lengths, split, shuffle, seed,
                           num_epochs, use_cached, task_tokens)
    ds = ds.map(lambda ex: {k: ex[k] for k in _MODEL_FEATURES if k in ex})
    iterator = packing.packed_batches(ds, global_rows, layout, skip_examples)
    first = next(iterator, None)
  if first is None:
    raise UserError(f"{mixture_or_task_name} split {split!r} yields no example to pack (empty "
                    "dataset?); check the data")

  def gen():
    yield host_rows(first[0]), first[1]
    for batch, count in iterator:
      yield host_rows(batch), count
  return gen()


def with_example_index(local_batch: Dict[str, np.ndarray], step: int,
                       global_batch_size: int) -> Dict[str, np.ndarray]:
  """Adds `example_index` `[b]` int32: each example's global position in the run's data order.

  Step `s` consumes examples `[s * B, (s + 1) * B)`; this host's rows are its
  contiguous block of the global batch (`make_array_from_process_local_data`).
  Methods key per-example randomness on it, so any mesh or microbatching
  samples what one device does.
  """
  rows = len(next(iter(local_batch.values())))
  first = step * global_batch_size + jax.process_index() * rows
  return {**local_batch, "example_index": np.arange(first, first + rows, dtype=np.int32)}
