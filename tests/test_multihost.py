"""Multi-host pieces that one process can check: the launch flags and environment variables, the
host slice of the global batches (the order of examples does not depend on the number of hosts)
and the cross-host agreement check. The 2-process runs are in test_multiprocess.py."""
import argparse

import jax
import numpy as np
import pytest

from prompt_tuning import cli, multihost
from prompt_tuning.errors import UserError
from prompt_tuning.train import data as data_lib
from tests.train_helpers import TOY_FILES

EXPLICIT = ["--coordinator_address=10.0.0.2:8476", "--process_count=2", "--process_index=1"]
ENVIRONMENT = {"JAX_COORDINATOR_ADDRESS": "10.0.0.2:8476", "JAX_NUM_PROCESSES": "2",
               "JAX_PROCESS_ID": "1"}


def _resolve(argv, environ=None):
  parser = argparse.ArgumentParser()
  multihost.add_arguments(parser)
  return multihost.resolve(parser.parse_args(argv), environ or {})


def test_flags_and_environment_name_the_hosts():
  want = {"coordinator_address": "10.0.0.2:8476", "num_processes": 2, "process_id": 1}
  assert _resolve(EXPLICIT) == want
  assert _resolve(["--multiprocess_gpu", *EXPLICIT]) == want
  assert _resolve([], ENVIRONMENT) == want
  assert _resolve(["--multiprocess_gpu"], ENVIRONMENT) == want
  # Flags win over the environment.
  assert _resolve(["--process_index=0"], ENVIRONMENT)["process_id"] == 0
  # Single process without any; --distributed alone lets JAX detect the hosts (Cloud TPU).
  assert _resolve([]) is None
  assert _resolve(["--distributed"]) == {}


@pytest.mark.parametrize("argv, environ, needles", [
    (["--multiprocess_gpu"], {}, ["--multiprocess_gpu", "--coordinator_address",
                                  "--process_count", "--process_index"]),
    (["--process_count=2"], {}, ["--process_count", "--coordinator_address", "--distributed"]),
    ([], {"JAX_PROCESS_ID": "0"}, ["$JAX_PROCESS_ID", "--process_count"]),
    (["--coordinator_address=10.0.0.2", "--process_count=2", "--process_index=0"], {},
     ["HOST:PORT"]),
    (EXPLICIT[:2] + ["--process_index=2"], {}, ["--process_index=2", "0..1"]),
    (EXPLICIT[:1] + ["--process_count=two", "--process_index=0"], {}, ["--process_count", "two"]),
    (EXPLICIT[:1] + ["--process_count=0", "--process_index=0"], {}, ["--process_count=0"]),
])
def test_bad_combinations_are_one_line_errors(argv, environ, needles):
  with pytest.raises(UserError) as error:
    _resolve(argv, environ)
  message = str(error.value)
  assert "\n" not in message
  for needle in needles:
    assert needle in message, message


def test_the_cli_refuses_an_incomplete_host_list_before_reading_gin(tmp_path, capsys,
                                                                     monkeypatch):
  for name in ENVIRONMENT:
    monkeypatch.delenv(name, raising=False)
  with pytest.raises(SystemExit) as exit_info:
    cli.main(["train", *[f"--gin_file={f}" for f in TOY_FILES], "--process_count=2",
              f"--gin.MODEL_DIR='{tmp_path}/run'"])
  assert exit_info.value.code != 0
  errors = [l for l in capsys.readouterr().err.splitlines() if l.startswith("error:")]
  assert len(errors) == 1 and "--coordinator_address" in errors[0], errors


def _host_batches(monkeypatch, hosts, index, local, skip=0, count=3):
  monkeypatch.setattr(jax, "process_count", lambda: hosts)
  monkeypatch.setattr(jax, "process_index", lambda: index)
  stream = data_lib.batches("toy_parity", {"inputs": 16, "targets": 8}, "train", local, seed=3,
                            skip_batches=skip)
  return [next(stream) for _ in range(count)]


def test_hosts_split_the_same_global_batches_for_any_number_of_hosts(monkeypatch):
  data_lib.import_task_modules("prompt_tuning.data.toy_tasks")
  one = _host_batches(monkeypatch, 1, 0, 8, count=4)
  for hosts in (2,):
    parts = [_host_batches(monkeypatch, hosts, i, 8 // hosts, count=4) for i in range(hosts)]
    for step, batch in enumerate(one):
      for key, value in batch.items():
        np.testing.assert_array_equal(np.concatenate([p[step][key] for p in parts]), value)
  # A resume skips global batches: host 1 of 2 continues with its rows of batch 2.
  resumed = _host_batches(monkeypatch, 2, 1, 4, skip=2, count=2)
  for step, batch in enumerate(resumed):
    np.testing.assert_array_equal(batch["encoder_input_tokens"],
                                  one[step + 2]["encoder_input_tokens"][4:])
  # The example indices number the same rows (host i holds the i-th block).
  indices = data_lib.with_example_index(resumed[0], 2, 8)["example_index"]
  np.testing.assert_array_equal(indices, np.arange(20, 24))


def test_hosts_that_disagree_are_named(monkeypatch):
  from jax.experimental import multihost_utils
  monkeypatch.setattr(jax, "process_count", lambda: 3)
  monkeypatch.setattr(multihost, "sync", lambda name: None)
  masks = np.array([1.0, 0.0, 1.0])

  def gather(local):  # process 2 saw other masks
    other = np.ones_like(local)
    return np.stack([local, local, other])

  monkeypatch.setattr(multihost_utils, "process_allgather", gather)
  with pytest.raises(UserError, match=r"XPrompt's masks differ between hosts: process\(es\) \[2\]"):
    multihost.check_same_on_hosts("XPrompt's masks", masks)
  monkeypatch.setattr(multihost_utils, "process_allgather", lambda local: np.stack([local] * 3))
  multihost.check_same_on_hosts("XPrompt's masks", masks)  # agreeing hosts pass


def test_barriers_are_distinct_and_a_missing_host_is_one_line(monkeypatch):
  from jax._src import distributed

  class Client:
    def __init__(self):
      self.barriers = []

    def wait_at_barrier(self, name, timeout_in_ms):
      self.barriers.append((name, timeout_in_ms))
      if name.startswith("late"):
        raise RuntimeError("DEADLINE_EXCEEDED: Barrier timed out. Id: late\n  (a long C++ trace)")

  client = Client()
  monkeypatch.setattr(jax, "process_count", lambda: 2)
  monkeypatch.setattr(distributed.global_state, "client", client)
  multihost.sync("written")
  multihost.sync("written")
  first, second = client.barriers
  assert first[0] != second[0] and first[1] == second[1] == multihost.BARRIER_TIMEOUT_S * 1000
  with pytest.raises(UserError) as error:
    multihost.sync("late", timeout_s=5)
  message = str(error.value)
  assert "\n" not in message and "'late'" in message and "5 s" in message
  assert "DEADLINE_EXCEEDED" in message


def test_a_failed_join_is_one_line_naming_the_settings(monkeypatch):
  def unreachable(**kwargs):
    raise RuntimeError("DEADLINE_EXCEEDED: Barrier timed out\n  (a long C++ trace)")

  monkeypatch.setattr(jax.distributed, "initialize", unreachable)
  monkeypatch.setattr(jax.config, "update", lambda *args: None)  # leave gloo unset here
  parser = argparse.ArgumentParser()
  multihost.add_arguments(parser)
  with pytest.raises(UserError) as error:
    multihost.initialize(parser.parse_args(EXPLICIT), {})
  message = str(error.value)
  assert "\n" not in message and "DEADLINE_EXCEEDED" in message
  assert "coordinator_address=10.0.0.2:8476" in message and "process_id=1" in message
