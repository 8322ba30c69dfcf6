"""Shared fixtures: the repo root, ../shared data, and quiet native logging."""
import os
import pathlib

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


def pytest_configure(config):
  config.addinivalue_line(
      "markers", "slow: over ~20 s on 2 cores (multi-device and multi-process runs, end-to-end "
      "commands); `make test` leaves them to `make test-slow`, and CI runs both")


@pytest.fixture
def shared_data():
  """../shared/data, or skip when this clone has none beside it."""
  if not SHARED_DATA.is_dir():
    pytest.skip(f"{SHARED_DATA} is absent (it is present in CI and the dev machines)")
  return SHARED_DATA


@pytest.fixture
def vocab(shared_data):
  """The T5 SentencePiece model in ../shared/data, as a path string."""
  path = shared_data / "t5_vocab" / "sentencepiece.model"
  if not path.is_file():
    pytest.skip(f"{path} is absent")
  return str(path)


@pytest.fixture(autouse=True)
def _fresh_gin_config():
  """Gin bindings are global and also apply to direct constructions of
  configurables (e.g. `Prompt(...)`): no test may see another test's config."""
  import gin
  gin.clear_config()
  yield
  gin.clear_config()


@pytest.fixture(scope="session")
def prepared(tmp_path_factory):
  """The reliability tests' prepared files (`reliability_helpers.prepare`), built once per
  session: a finished toy run, a backbone, a PEFT adapter, inputs. Tests change only copies."""
  from tests.reliability_helpers import prepare
  return prepare(tmp_path_factory.mktemp("reliability"))
