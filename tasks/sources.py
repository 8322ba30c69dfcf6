"""`TextSource`: raw examples (TFDS or local official files) -> formatted text.

The source does the text formatting itself, because two steps depend on the
split and seqio preprocessors never see the split: training-only filtering or
expansion (WSC positives, one ReCoRD example per answer) and the per-label
expansion of rank-classification tasks (eval splits only; a `_rank` task's
train split is the ordinary task). Task preprocessors then only tokenize.

Which raw source is read is decided per call, not at registration: when a
data directory is configured (`local_data_dir.path`, gin macro `DATA_DIR`,
or `$PROMPT_TUNING_DATA_DIR`) and holds the task's folder, the official files
there are read; otherwise TFDS.
"""
import functools
import logging
import os
from typing import Any, Callable, Iterable, Mapping, Optional, Sequence

import gin
import numpy as np
import seqio
import tensorflow as tf
import tensorflow_datasets as tfds

from prompt_tuning.errors import UserError
from prompt_tuning.tasks import formats
from prompt_tuning.tasks.local_files import LocalFiles, Row

DATA_DIR_ENV = "PROMPT_TUNING_DATA_DIR"
DatasetFn = Callable[[tf.data.Dataset], tf.data.Dataset]


@gin.configurable
def local_data_dir(path: Optional[str] = None) -> Optional[str]:
  """The directory of official benchmark files, or None to read TFDS.

  Args:
    path: e.g. bound in gin as `local_data_dir.path = %DATA_DIR`. Default:
      `$PROMPT_TUNING_DATA_DIR` when set.
  """
  return path or os.environ.get(DATA_DIR_ENV) or None


def _tf_ready(value):
  """An encoded TFDS example made acceptable to `Dataset.from_generator`:
  strings as bytes, string lists as object arrays."""
  if isinstance(value, dict):
    return {k: _tf_ready(v) for k, v in value.items()}
  if isinstance(value, np.ndarray) and value.dtype == object:
    value = value.tolist()
  if isinstance(value, (list, tuple)):
    items = [_tf_ready(v) for v in value]
    if not items or isinstance(items[0], bytes):
      return np.array(items, dtype=object)
    return np.array(items)
  if isinstance(value, str):
    return value.encode("utf-8")
  return value


def rows_dataset(features: tfds.features.FeaturesDict, rows: Iterable[Row]) -> tf.data.Dataset:
  """Decoded examples, as TFDS serves them, of TFDS-shaped `rows`.

  `rows` is iterated afresh on each pass over the dataset (pass a list or a
  re-iterable object for more than one pass).
  """
  def generate():
    for row in rows:
      yield _tf_ready(features.encode_example(row))

  ds = tf.data.Dataset.from_generator(generate, output_signature=features.get_tensor_spec())
  return ds.map(features.decode_example)


@functools.lru_cache(maxsize=None)
def _tfds_features(tfds_name: str) -> tfds.features.FeaturesDict:
  # Building the builder object reads only code-defined metadata (no data).
  return tfds.builder(tfds_name).info.features


def _expected(feature: tfds.features.FeatureConnector) -> str:
  if isinstance(feature, tfds.features.ClassLabel):
    return f"one of its labels {', '.join(feature.names)} (or -1 when unlabeled)"
  if isinstance(feature, tfds.features.Text):
    return "text"
  dtype = getattr(feature, "dtype", None)
  if dtype is not None and not isinstance(feature, tfds.features.FeaturesDict):
    return f"a value of type {getattr(dtype, 'name', dtype)}"
  return f"what TFDS's {type(feature).__name__} feature holds"


def _is_text(value: Any) -> bool:
  """Whether `value` is text or a (nested) list of texts: what a string feature holds."""
  if isinstance(value, (list, tuple)):
    return all(_is_text(v) for v in value)
  return isinstance(value, (str, bytes))


def check_row(features: tfds.features.FeaturesDict, row: Row, where: str) -> None:
  """Encodes `row` as TFDS will, field by field; a field TFDS would refuse (inside tf.data,
  as a `KeyError` deep in its ops) is a UserError naming `where` and the field."""
  for key, feature in features.items():
    if key not in row:
      raise UserError(f"{where} has no field {key!r}")
    try:
      feature.encode_example(row[key])
      if feature.tf_dtype == tf.string and not _is_text(row[key]):
        raise TypeError("TFDS passes a non-string to tf.data, which fails there")
    except Exception:  # pylint: disable=broad-except  (TFDS raises many types)
      shown = repr(row[key])
      shown = shown if len(shown) <= 60 else shown[:57] + "..."
      raise UserError(f"{where}: field {key!r} holds {shown}, not {_expected(feature)}; fix the "
                      "row or restore the official file") from None


class _Rows:
  """Re-iterable rows of one local file: each pass reads the file again."""

  def __init__(self, read: Callable, path: str, split: str):
    self._read, self._path, self._split = read, path, split

  def __iter__(self):
    return (row for _, row in self._read(self._path, self._split))


class TextSource(seqio.DataSource):
  """Formatted `inputs`/`targets` examples of one task.

  Args:
    splits: canonical split -> TFDS split (e.g. `validation` ->
      `validation_matched`).
    format_fn: raw example -> formatted example (see `formats`).
    tfds_name: `name/config:version`, or None for a local-files-only dataset.
    local: where the official files live under the data directory, if supported.
    features: raw feature spec for local files when there is no TFDS builder.
    train_fn: applied to formatted train-split examples.
    label_names: when set, non-train splits are expanded per label
      (rank classification).
  """

  def __init__(self, splits: Mapping[str, str], format_fn: formats.Formatter,
               tfds_name: Optional[str] = None, local: Optional[LocalFiles] = None,
               features: Optional[tfds.features.FeaturesDict] = None,
               train_fn: Optional[DatasetFn] = None,
               label_names: Optional[Sequence[str]] = None):
    super().__init__(splits=tuple(splits))
    if tfds_name is None and local is None:
      raise ValueError("a TextSource needs a TFDS name or local files")
    self._split_map = dict(splits)
    self._format_fn = format_fn
    self._tfds_name = tfds_name
    self._local = local
    self._features = features
    self._train_fn = train_fn
    self._label_names = tuple(label_names) if label_names else None
    self._row_counts = {}  # (path, split, mtime) -> rows, of local files checked
    # read_only: TFDS never downloads here. Offline, a download retries for
    # minutes and leaves stub folders; `tfds build` prepares data on purpose.
    self._tfds = (seqio.TfdsDataSource(tfds_name, splits=self._split_map, read_only=True)
                  if tfds_name else None)

  @property
  def supports_arbitrary_sharding(self) -> bool:
    return False

  @property
  def label_names(self) -> Optional[Sequence[str]]:
    return self._label_names

  @property
  def tfds_name(self) -> Optional[str]:
    return self._tfds_name

  @property
  def local(self) -> Optional[LocalFiles]:
    return self._local

  def __str__(self):
    return f"TextSource(tfds={self._tfds_name}, local={self._local and self._local.folder})"

  # --- which raw source -----------------------------------------------------

  def _local_dir(self) -> Optional[str]:
    """The data directory when this call should read local files, else None."""
    data_dir = local_data_dir()
    if self._local is not None and data_dir and os.path.isdir(
        os.path.join(data_dir, self._local.folder)):
      return data_dir
    if self._tfds is None:
      where = os.path.join(data_dir or "$DATA_DIR", self._local.folder)
      raise UserError(
          f"this dataset is not in TFDS and needs its files under {where}/ "
          f"({', '.join(self._local.files.values())}); set gin macro DATA_DIR "
          f"(local_data_dir.path) or ${DATA_DIR_ENV} to their parent directory")
    return None

  def _not_prepared_message(self) -> str:
    builder = self._tfds.tfds_dataset.builder
    name = self._tfds_name.split(":")[0]
    where = (f"${DATA_DIR_ENV}/{self._local.folder}/ ({', '.join(self._local.files.values())})"
             if self._local else None)
    return (f"TFDS dataset {self._tfds_name} is not prepared in {builder.data_dir_root} "
            f"(nothing is downloaded automatically); prepare it with `tfds build {name} "
            f"--data_dir={builder.data_dir_root}` where there is network access, then set "
            f"TFDS_DATA_DIR" + (f", or put the official files in {where}" if where else ""))

  def data_available(self, split: str) -> bool:
    """Whether `split` can be read without a download: the official file under the
    data directory, or a prepared TFDS dataset (in `--tfds_data_dir` / $TFDS_DATA_DIR)."""
    data_dir = local_data_dir()
    if self._local is not None and data_dir and os.path.isdir(
        os.path.join(data_dir, self._local.folder)):
      return split in self._local.files and os.path.isfile(self._local.path(data_dir, split))
    if self._tfds is None:
      return False
    absl_logger = logging.getLogger("absl")
    level = absl_logger.level
    absl_logger.setLevel(logging.ERROR)  # "Variant folder ... has no dataset_info.json"
    try:
      return bool(self._tfds.tfds_dataset.builder.is_prepared())
    except Exception:  # pylint: disable=broad-except  (an unreachable gs:// data dir, ...)
      return False
    finally:
      absl_logger.setLevel(level)

  def _check_split(self, split: str):
    if split not in self._split_map:
      raise UserError(f"split {split!r} is not available here; choose one of "
                      f"{', '.join(self._split_map)}")

  def _local_path(self, data_dir: str, split: str) -> str:
    path = self._local.path(data_dir, split)
    if not os.path.isfile(path):
      raise UserError(f"missing {path}; put the official {os.path.basename(path)} there "
                      f"or unset DATA_DIR to read TFDS")
    return path

  def _local_features(self) -> tfds.features.FeaturesDict:
    return self._features or _tfds_features(self._tfds_name)

  def _checked_rows(self, path: str, split: str) -> int:
    """Reads the local file once in Python, checking every row as TFDS will encode it; the
    number of rows.

    Inside tf.data a bad row is an error of TensorFlow's ops that names neither the file nor
    the line, so each file is checked before a dataset is built on it (once per version of
    the file). A file without rows is refused: it would make a split, and its metrics, empty.
    """
    key = (path, split, os.path.getmtime(path))
    if key not in self._row_counts:
      features = self._local_features()
      count = 0
      for line, row in self._local.read(path, split):
        check_row(features, row, f"{path} line {line}")
        count += 1
      if not count:
        raise UserError(f"{path} holds no examples; put the official "
                        f"{os.path.basename(path)} there (or unset DATA_DIR to read TFDS)")
      self._row_counts[key] = count
    return self._row_counts[key]

  def _local_dataset(self, data_dir: str, split: str) -> tf.data.Dataset:
    path = self._local_path(data_dir, split)
    self._checked_rows(path, split)
    logging.info("Reading %s from local file %s", split, path)
    return rows_dataset(self._local_features(), _Rows(self._local.read, path, split))

  # --- seqio.DataSource -----------------------------------------------------

  def raw_dataset(self, split: str, shuffle: bool = False, seed: Optional[int] = None,
                  shard_info: Optional[seqio.ShardInfo] = None) -> tf.data.Dataset:
    """Unformatted TFDS-shaped examples of `split`, from local files or TFDS."""
    self._check_split(split)
    data_dir = self._local_dir()
    if data_dir is None:
      try:
        return self._tfds.get_dataset(split, shuffle=shuffle, seed=seed, shard_info=shard_info)
      except AssertionError:  # TFDS: "could not find data in ..." (not prepared)
        raise UserError(self._not_prepared_message()) from None
    ds = self._local_dataset(data_dir, split)
    if shard_info:
      ds = ds.shard(shard_info.num_shards, shard_info.index)
    return ds

  def get_dataset(self, split: str = "train", shuffle: bool = True,
                  seed: Optional[int] = None, shard_info: Optional[seqio.ShardInfo] = None,
                  *, sequence_length=None, use_cached=False, num_epochs=1) -> tf.data.Dataset:
    del sequence_length, use_cached, num_epochs  # Handled by seqio.Task.
    ds = self.raw_dataset(split, shuffle, seed, shard_info)
    ds = ds.map(self._format_fn, num_parallel_calls=tf.data.AUTOTUNE)
    if split == "train":
      if self._train_fn is not None:
        ds = self._train_fn(ds)
    elif self._label_names:
      ds = formats.rank_expand(ds, self._label_names)
    return ds

  def list_shards(self, split: str) -> Sequence[str]:
    data_dir = self._local_dir()
    if data_dir is None:
      return self._tfds.list_shards(split)
    return [self._local.path(data_dir, split)]

  def num_input_examples(self, split: str) -> Optional[int]:
    """Raw examples in `split` (used for examples-proportional mixing)."""
    self._check_split(split)
    data_dir = self._local_dir()
    if data_dir is None:
      try:
        return self._tfds.num_input_examples(split)
      except KeyError:  # TFDS metadata without split sizes (not prepared, or mocked).
        return None
    return self._checked_rows(self._local_path(data_dir, split), split)
