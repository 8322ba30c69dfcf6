"""Two JAX processes on one machine (gloo collectives): the multi-host path of the trainer."""
import json
import os
import socket
import subprocess
import sys

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_WORKER = r"""
import json, sys
import jax
jax.config.update("jax_cpu_collectives_implementation", "gloo")
jax.distributed.initialize(coordinator_address=sys.argv[1], num_processes=2,
                           process_id=int(sys.argv[2]))
sys.path.insert(0, {repo!r})
from tests.train_helpers import toy_train, losses
summary = toy_train(sys.argv[3], steps=3, extra=["make_mesh.mesh_shape = [4, 1]"])
print("RESULT" + json.dumps({{"process": jax.process_index(), "devices": jax.device_count(),
                             "losses": losses(summary)}}), flush=True)
"""


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def test_two_processes_train_one_global_batch(tmp_path):
  address = f"127.0.0.1:{_free_port()}"
  env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2",
         "JAX_PLATFORMS": "cpu", "TF_CPP_MIN_LOG_LEVEL": "3"}
  script = _WORKER.format(repo=REPO)
  procs = [subprocess.Popen([sys.executable, "-c", script, address, str(i), str(tmp_path / "run")],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
           for i in range(2)]
  results = []
  for p in procs:
    out, err = p.communicate(timeout=600)
    assert p.returncode == 0, err[-3000:]
    results.append(json.loads(out.split("RESULT")[-1]))
  assert sorted(r["process"] for r in results) == [0, 1]
  assert all(r["devices"] == 4 for r in results)
  # Both hosts see the same global loss, computed over both hosts' shards.
  np.testing.assert_allclose(results[0]["losses"], results[1]["losses"], rtol=1e-6)
  assert all(np.isfinite(results[0]["losses"]))
  assert (tmp_path / "run" / "checkpoints" / "3").is_dir()
  assert (tmp_path / "run" / "prompts" / "step_3.npy").exists()
