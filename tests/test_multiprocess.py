"""A pod computes what one host computes: 2 processes x 2 fake CPU devices (gloo, 127.0.0.1),
launched with the CLI's multi-host flags, against 1 process x 4 devices.

The run is `prompt-tuning xprompt` on the toy task: its stage 1 is plain prompt tuning, stage 2
the importance scores (reduced over every host's batches), the mask search (eval metrics) and
the mask-agreement check, stage 3 retraining from the chosen masks. The two processes are
SIGKILLed together during training and restarted, so the same launches check that a multi-host
run resumes exactly. Each process costs ~15 s of imports: keep the launches few.
"""
import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from prompt_tuning.run_dir import RunDir, XPromptDir
from tests.train_helpers import REPO, TOY_BINDINGS, TOY_FILES

STEPS = 2
TOLERANCE = dict(rtol=1e-4, atol=1e-5)  # f32 sums over devices/processes in another order
pytestmark = pytest.mark.slow  # several processes, each ~15 s of imports: `make test-slow`


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _argv(model_dir):
  bindings = [*TOY_BINDINGS, f"MODEL_DIR = '{model_dir}'", f"TRAIN_STEPS = {STEPS}",
              "CHECKPOINT_PERIOD = 1", "PROMPT_LENGTH = 4", "XPROMPT_PIECES = 2",
              "run_xprompt.token_ratios = [0.5]", "run_xprompt.piece_ratios = [0.5]",
              "run_xprompt.importance_batches = 2", "run_xprompt.metric_name = 'accuracy'",
              "run_xprompt.tolerance = 0.0", "run_xprompt.test_split = 'test'"]
  files = ("models/t5_1_1_toy_prompt.gin", "methods/xprompt.gin", "runs/prompt_finetune.gin")
  return [sys.executable, "-m", "prompt_tuning", "xprompt", *[f"--gin_file={f}" for f in files],
          *[f"--gin.{b}" for b in bindings]]


def _env(devices: int, cache_dir):
  # One compilation cache for the launches: the restarted pair reuses the killed pair's programs.
  return {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}",
          "JAX_PLATFORMS": "cpu", "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": str(REPO),
          "JAX_COMPILATION_CACHE_DIR": str(cache_dir),
          "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
          "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0"}


def _start(argv, env, log_path):
  """(process, its open log): stdout and stderr both go to `log_path`."""
  log = open(log_path, "w")
  return subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT), log


def _launch_pair(model_dir, log_dir, tag, argv_of=_argv):
  """Two processes of one run: the flags for process 0, the environment variables for 1."""
  port = _free_port()
  procs = []
  for i in range(2):
    argv, env = argv_of(model_dir), _env(2, os.path.join(log_dir, "cache"))
    if i == 0:
      argv += [f"--coordinator_address=127.0.0.1:{port}", "--process_count=2", "--process_index=0"]
    else:
      env.update(JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}", JAX_NUM_PROCESSES="2",
                 JAX_PROCESS_ID="1")
    procs.append(_start(argv, env, os.path.join(log_dir, f"{tag}_{i}.log")))
  return procs


def _finish(procs, timeout=900):
  for proc, log in procs:
    try:
      proc.wait(timeout=timeout)
    finally:
      proc.kill()
      log.close()
    with open(log.name) as f:
      output = f.read()
    assert proc.returncode == 0, output[-3000:]


def _stage1_checkpoints(model_dir):
  folder = XPromptDir(model_dir).stage1.checkpoints
  return sorted(int(n) for n in os.listdir(folder) if n.isdigit()) if os.path.isdir(folder) else []


def _results(model_dir):
  with open(XPromptDir(model_dir).summary) as f:
    summary = json.load(f)
  with open(summary["report"]) as f:
    report = json.load(f)
  return summary, report, np.load(summary["final_prompt"])


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  """(1 x 4 devices results, 2 x 2 results after SIGKILL + restart, 2 x 2 output folder)."""
  root = tmp_path_factory.mktemp("multihost")
  single_dir, multi_dir = str(root / "single"), str(root / "multi")
  with open(root / "single.log", "w") as log:
    single = subprocess.Popen(_argv(single_dir), env=_env(4, root / "cache"), stdout=log,
                              stderr=subprocess.STDOUT)
  killed = _launch_pair(multi_dir, str(root), "killed")
  try:
    deadline = time.monotonic() + 600
    while not _stage1_checkpoints(multi_dir):
      assert all(p.poll() is None for p, _ in killed), "a process ended before it was killed"
      assert time.monotonic() < deadline, "no stage-1 checkpoint within 600 s"
      time.sleep(0.02)
    for proc, _ in killed:  # both hosts, wherever they are
      os.kill(proc.pid, signal.SIGKILL)
  finally:
    for proc, log in killed:
      proc.kill()
      proc.wait()
      log.close()
  assert not os.path.exists(XPromptDir(multi_dir).summary)
  _finish(_launch_pair(multi_dir, str(root), "resumed"))
  single.wait(timeout=900)
  assert single.returncode == 0, (root / "single.log").read_text()[-3000:]
  return _results(single_dir), _results(multi_dir), multi_dir, single_dir


def test_two_hosts_train_prune_and_evaluate_as_one_host(runs):
  (s_summary, s_report, s_prompt), (m_summary, m_report, m_prompt), multi_dir, single_dir = runs
  # Losses at every step of both training stages (the stage-1 steps after the kill were
  # recomputed by the restarted processes).
  steps = [h["step"] for h in m_summary["train_history"]]
  assert steps == [h["step"] for h in s_summary["train_history"]] and len(steps) == 2 * STEPS
  np.testing.assert_allclose([h["loss"] for h in m_summary["train_history"]],
                             [h["loss"] for h in s_summary["train_history"]], **TOLERANCE)
  # Importance over every host's batches: a host scoring only its own rows differs here.
  for key in ("token_scores", "piece_scores"):
    np.testing.assert_allclose(m_report[key], s_report[key], rtol=1e-4, atol=1e-7)
  assert m_report["token_mask"] == s_report["token_mask"]
  assert m_report["piece_mask"] == s_report["piece_mask"]
  # Eval metrics of every candidate and the held-out ones, gathered over both hosts' shards.
  assert [c["metric"] for c in m_report["candidates"]] == [
      c["metric"] for c in s_report["candidates"]]
  assert m_summary["held_out_stages"] == s_summary["held_out_stages"]
  np.testing.assert_allclose(m_prompt, s_prompt, **TOLERANCE)
  # The prompt of every checkpointed step of both training stages.
  multi, single = XPromptDir(multi_dir), XPromptDir(single_dir)
  for stage in ("stage1", "stage3"):
    for step in range(1, STEPS + 1):
      np.testing.assert_allclose(np.load(getattr(multi, stage).prompt(f"step_{step}")),
                                 np.load(getattr(single, stage).prompt(f"step_{step}")),
                                 **TOLERANCE)


def test_only_process_zero_writes_and_the_lock_is_released(runs):
  multi_dir = runs[2]
  assert not os.path.exists(os.path.join(multi_dir, ".lock"))
  folder = XPromptDir(multi_dir)
  for stage in (folder.stage1, folder.stage3):
    assert not os.path.exists(stage.lock)
    # One Orbax checkpoint per saved step, written together by both processes.
    assert os.listdir(stage.checkpoints)
  written = [os.path.join(d, f) for d, _, files in os.walk(multi_dir) for f in files]
  assert not [p for p in written if p.endswith(".tmp")]
  # TensorBoard: one events file per run of a stage, from process 0 (stage 1 ran twice:
  # killed, then resumed; stage 3 once).
  def events(stage):
    return [f for f in os.listdir(stage.train_tensorboard) if f.startswith("events.out")]
  assert len(events(folder.stage1)) == 2
  assert len(events(folder.stage3)) == 1


_LAGGING_HOST = """
import sys, time
import jax, jax.numpy as jnp, numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P
from prompt_tuning import multihost
from prompt_tuning.train import partitioning
index, port, lag = int(sys.argv[1]), sys.argv[2], float(sys.argv[3])
multihost.initialize(None, {"JAX_COORDINATOR_ADDRESS": f"127.0.0.1:{port}",
                            "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": str(index)})
mesh = partitioning.Partitioner(partitioning.make_mesh(model_parallel_size=2)).mesh
x = jax.make_array_from_process_local_data(NamedSharding(mesh, P(("data", "model"))),
                                           np.arange(2, dtype=np.float32) + 2 * index)
program = jax.jit(lambda x: (jnp.max(x), x.reshape(2, 2).sum(0)),
                  out_shardings=NamedSharding(mesh, P())).lower(x).compile()
if index == 1:
  time.sleep(lag)  # as a host whose compile takes longer than the other's
top, sums = program(x)
print("result", float(top), multihost.to_host(sums).tolist(), flush=True)
multihost.sync("done")
"""


def test_a_host_that_compiles_over_30_s_later_still_joins(tmp_path):
  """Gloo gives a device group's first collective 30 s for every host to arrive (CI lost a
  run to it under load); the Partitioner opens the mesh's groups behind a barrier first."""
  port = _free_port()
  _finish([_start([sys.executable, "-c", _LAGGING_HOST, str(i), str(port), "35"],
                  _env(2, tmp_path / "cache"), tmp_path / f"lag_{i}.log") for i in range(2)],
          timeout=300)
  for i in range(2):
    assert "result 3.0 [2.0, 4.0]" in (tmp_path / f"lag_{i}.log").read_text()


def _packed_train_argv(model_dir):
  bindings = [*TOY_BINDINGS, f"MODEL_DIR = '{model_dir}'", "TRAIN_STEPS = 3",
              "CHECKPOINT_PERIOD = 3", "PACK = True"]
  return [sys.executable, "-m", "prompt_tuning", "train",
          *[f"--gin_file={f}" for f in TOY_FILES], *[f"--gin.{b}" for b in bindings]]


def test_two_hosts_train_packed_as_one_host(tmp_path):
  """PACK = True: every host packs the same global batch from the global example stream and
  keeps its own rows, so 2 processes x 2 devices train as 1 process x 4 (dropout on)."""
  single_dir, multi_dir = tmp_path / "single", tmp_path / "multi"
  procs = _launch_pair(str(multi_dir), str(tmp_path), "packed", _packed_train_argv)
  procs.append(_start(_packed_train_argv(str(single_dir)), _env(4, tmp_path / "cache"),
                      tmp_path / "packed_single.log"))
  _finish(procs)

  def history(run):
    with open(RunDir(str(run)).train_summary) as f:
      return json.load(f)["train_history"]
  single, multi = history(single_dir), history(multi_dir)
  assert [h["step"] for h in multi] == [h["step"] for h in single] == [1, 2, 3]
  for key in ("loss", "target_tokens"):
    np.testing.assert_allclose([h[key] for h in multi], [h[key] for h in single], **TOLERANCE)
  # More target tokens than 8 one-example rows carry: the rows were packed.
  assert single[0]["target_tokens"] > 8 * 2
  np.testing.assert_allclose(np.load(RunDir(str(multi_dir)).prompt("step_3")),
                             np.load(RunDir(str(single_dir)).prompt("step_3")), **TOLERANCE)
  meta = [json.loads((run / "checkpoints" / "3" / "meta" / "metadata").read_text())
          for run in (single_dir, multi_dir)]
  assert meta[0]["examples_consumed"] == meta[1]["examples_consumed"] > 3 * 8
