"""`MODEL_DIR/.lock`: one writer per run folder."""
import json
import os
import socket
import subprocess
import sys

import pytest

from prompt_tuning.errors import UserError
from prompt_tuning.train import run_lock
from prompt_tuning.train.run_lock import RunLock

LOCK_FILE = ".lock"  # where docs and `RunDir.lock` say a run keeps its lock


def dead_pid() -> int:
  proc = subprocess.Popen([sys.executable, "-c", "pass"])
  proc.wait()
  return proc.pid


@pytest.fixture
def sleeper():
  """A live process that is not this one."""
  proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
  yield proc.pid
  proc.kill()
  proc.wait()


def write_lock(model_dir, pid, hostname=None):
  os.makedirs(model_dir, exist_ok=True)
  record = {"pid": pid, "hostname": hostname or socket.gethostname(), "start_time": 1.7e9,
            "token": "x"}
  (model_dir / LOCK_FILE).write_text(json.dumps(record))


@pytest.fixture(params=["local", "kvstore"])
def make_lock(request, tmp_path):
  """RunLock on a local folder (O_EXCL), or through the conditional-write path used for gs://."""
  def make(model_dir):
    if request.param == "local":
      return RunLock(str(model_dir))
    os.makedirs(model_dir, exist_ok=True)
    return RunLock(str(model_dir), _kvstore={"driver": "file", "path": str(model_dir) + "/"})
  return make


def test_one_writer_at_a_time(tmp_path, make_lock):
  model_dir = tmp_path / "run"
  first = make_lock(model_dir).acquire()
  record = json.loads((model_dir / LOCK_FILE).read_text())
  assert record["pid"] == os.getpid() and record["hostname"] == socket.gethostname()
  assert "start_time" in record
  with pytest.raises(UserError) as error:
    make_lock(model_dir).acquire()
  message = str(error.value)
  assert "\n" not in message
  assert f"in use by another run (pid {os.getpid()} on {socket.gethostname()}" in message
  assert "use another MODEL_DIR" in message and f"delete {model_dir / LOCK_FILE}" in message
  first.release()
  assert not (model_dir / LOCK_FILE).exists()
  with make_lock(model_dir):
    assert (model_dir / LOCK_FILE).exists()
  assert not (model_dir / LOCK_FILE).exists()


def test_a_live_process_keeps_its_lock(tmp_path, make_lock, sleeper):
  write_lock(tmp_path / "run", sleeper)
  with pytest.raises(UserError, match=f"pid {sleeper} on"):
    make_lock(tmp_path / "run").acquire()
  assert json.loads((tmp_path / "run" / LOCK_FILE).read_text())["pid"] == sleeper


def test_a_dead_process_lock_is_taken_over(tmp_path, make_lock, capsys):
  pid = dead_pid()
  write_lock(tmp_path / "run", pid)
  lock = make_lock(tmp_path / "run").acquire()
  assert json.loads((tmp_path / "run" / LOCK_FILE).read_text())["pid"] == os.getpid()
  notes = [l for l in capsys.readouterr().out.splitlines() if "took over" in l]
  assert len(notes) == 1 and f"pid {pid}" in notes[0]
  lock.release()
  assert not (tmp_path / "run" / LOCK_FILE).exists()


def test_a_lock_from_another_host_is_never_taken_over(tmp_path, make_lock):
  write_lock(tmp_path / "run", dead_pid(), hostname="some-other-host")
  with pytest.raises(UserError, match="pid .* on some-other-host"):
    make_lock(tmp_path / "run").acquire()


def test_release_leaves_a_lock_it_does_not_hold(tmp_path):
  lock = RunLock(str(tmp_path / "run")).acquire()
  write_lock(tmp_path / "run", 12345)  # someone replaced it
  lock.release()
  assert json.loads((tmp_path / "run" / LOCK_FILE).read_text())["pid"] == 12345


def test_released_when_the_decorated_function_raises(tmp_path):
  @run_lock.releases_run_lock
  def run(model_dir, fail):
    """Doc."""
    run_lock.acquire(model_dir)
    assert (tmp_path / "run" / LOCK_FILE).exists()
    if fail:
      raise ValueError("boom")
    return 7

  assert run(str(tmp_path / "run"), fail=False) == 7
  assert not (tmp_path / "run" / LOCK_FILE).exists()
  with pytest.raises(ValueError):
    run(str(tmp_path / "run"), fail=True)
  assert not (tmp_path / "run" / LOCK_FILE).exists()
  import inspect
  assert list(inspect.signature(run).parameters) == ["model_dir", "fail"]
  with pytest.raises(RuntimeError, match="outside"):
    run_lock.acquire(str(tmp_path / "run"))


def test_exactly_one_of_many_simultaneous_writers_wins(tmp_path, make_lock):
  import threading
  model_dir = tmp_path / "run"
  os.makedirs(model_dir)
  barrier, outcomes = threading.Barrier(8), []

  def contend():
    lock = make_lock(model_dir)
    barrier.wait()
    try:
      lock.acquire()
      outcomes.append("won")
    except UserError:
      outcomes.append("refused")

  threads = [threading.Thread(target=contend) for _ in range(8)]
  for t in threads:
    t.start()
  for t in threads:
    t.join()
  assert sorted(outcomes) == ["refused"] * 7 + ["won"]
