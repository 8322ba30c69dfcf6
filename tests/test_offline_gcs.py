"""A gs:// path that cannot be reached (checkpoint, vocabulary, data, any file) fails within
seconds in one line naming the path and the local way out, instead of minutes of retries and a
traceback. GCS is "unreachable" here by pointing the probe at a closed local port, so the tests
do not depend on this machine's network."""
import socket
import time

import pytest

from prompt_tuning import fs, gin_utils
from prompt_tuning.data import vocab
from prompt_tuning.errors import UserError
from tests.train_helpers import run_cli

BUCKET = "gs://prompt-tuning-test-no-such-bucket"
FAST_S = 20  # the probe's own limit is 5 s; the rest is the command's start-up on a busy CPU


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


@pytest.fixture
def offline(monkeypatch):
  monkeypatch.setenv(fs.GCS_PROBE_ENV, f"127.0.0.1:{_free_port()}")  # nothing listens there
  fs._gcs_unreachable.cache_clear()  # pylint: disable=protected-access
  yield
  fs._gcs_unreachable.cache_clear()  # pylint: disable=protected-access


def _one_error_line(out: str) -> str:
  errors = [l for l in out.splitlines() if l.startswith("error:")]
  assert len(errors) == 1 and "Traceback" not in out, out
  return errors[0]


def test_file_operations_on_an_unreachable_bucket_fail_fast(offline):
  path = f"{BUCKET}/prompts/step_10.npy"
  for operation in (fs.exists, fs.isdir, fs.read_bytes, fs.listdir):
    start = time.monotonic()
    with pytest.raises(UserError, match=f"{path} cannot be reached: no connection to 127.0.0.1"):
      operation(path)
    assert time.monotonic() - start < 5
  with pytest.raises(UserError, match="gsutil -m cp -r"):
    fs.exists(path)


def test_a_reachable_endpoint_passes(monkeypatch):
  with socket.socket() as server:
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    monkeypatch.setenv(fs.GCS_PROBE_ENV, f"127.0.0.1:{server.getsockname()[1]}")
    fs._gcs_unreachable.cache_clear()  # pylint: disable=protected-access
    try:
      fs.check_reachable(f"{BUCKET}/x")  # no error: GCS answers
      fs.check_reachable("/local/path")  # local paths are never probed
    finally:
      fs._gcs_unreachable.cache_clear()  # pylint: disable=protected-access


def test_convert_from_an_unreachable_bucket_fails_in_one_line(offline, tmp_path):
  source = f"{BUCKET}/checkpoint_1100000"
  start = time.monotonic()
  code, out = run_cli(["convert", "--from", "t5x", "--input", source,
                       "--output", str(tmp_path / "out")])
  assert code != 0 and time.monotonic() - start < FAST_S, out
  line = _one_error_line(out)
  assert f"{source} cannot be reached" in line and "--input" in line, line


def test_train_from_an_unreachable_checkpoint_fails_in_one_line(offline, tmp_path):
  source = f"{BUCKET}/t5_1_1_lm100k_base/checkpoint_1100000"
  start = time.monotonic()
  code, out = run_cli(["train", "--gin_file=models/t5_1_1_toy_prompt.gin",
                       "--gin_file=runs/prompt_finetune.gin", f"--gin.MODEL_DIR='{tmp_path}'",
                       "--gin.MIXTURE_OR_TASK_NAME='toy_parity'",
                       "--gin.MIXTURE_OR_TASK_MODULE='prompt_tuning.data.toy_tasks'",
                       f"--gin.INITIAL_CHECKPOINT_PATH='{source}'",
                       "--gin.TASK_FEATURE_LENGTHS={'inputs': 16, 'targets': 8}",
                       "--gin.TRAIN_STEPS=1_100_001"])
  assert code != 0 and time.monotonic() - start < FAST_S, out
  line = _one_error_line(out)
  assert f"{source} cannot be reached" in line and "INITIAL_CHECKPOINT_PATH" in line, line


def test_an_unreachable_vocabulary_names_the_local_setting(offline):
  path = f"{BUCKET}/vocabs/sentencepiece.model"
  with pytest.raises(UserError, match=f"{path} cannot be reached.*PROMPT_TUNING_VOCAB"):
    vocab.check_vocabulary(vocab.get_vocabulary(path))


def test_an_unreachable_tfds_data_dir_names_the_local_flag(offline):
  with pytest.raises(UserError, match=f"{BUCKET}/tfds cannot be reached.*--tfds_data_dir"):
    gin_utils.set_tfds_data_dir(f"{BUCKET}/tfds")
