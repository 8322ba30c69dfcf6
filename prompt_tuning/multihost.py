"""Joining a multi-host run: the command-line flags and `jax.distributed.initialize`.

Every host of a TPU pod slice or a GPU cluster runs the same command; JAX
then sees all hosts' devices as one mesh. On Cloud TPU (and SLURM, and other
clusters JAX detects) `--distributed` alone is enough. Elsewhere the hosts
are named explicitly, with T5X's flags or JAX's environment variables:

    --coordinator_address=HOST:PORT   $JAX_COORDINATOR_ADDRESS  (process 0's host)
    --process_count=N                 $JAX_NUM_PROCESSES
    --process_index=I                 $JAX_PROCESS_ID           (0 .. N-1, one per host)
    --multiprocess_gpu                requires the three above (T5X's flag)

Flags win over the environment; the three environment variables alone also
start a multi-host run. CPU collectives go through gloo, so the same
command runs several processes on one machine (how the tests check it).
"""
import hashlib
import os
from typing import Any, Dict, Optional

import numpy as np

from prompt_tuning.errors import UserError

# (flag, environment variable) of each explicit setting.
_SETTINGS = (("coordinator_address", "JAX_COORDINATOR_ADDRESS"),
             ("process_count", "JAX_NUM_PROCESSES"),
             ("process_index", "JAX_PROCESS_ID"))


def add_arguments(parser) -> None:
  parser.add_argument("--distributed", action="store_true",
                      help="call jax.distributed.initialize() first (multi-host TPU/GPU; on Cloud "
                      "TPU and SLURM the hosts are detected)")
  parser.add_argument("--coordinator_address", default=None,
                      help="HOST:PORT of process 0, for clusters JAX does not detect "
                      "(default: $JAX_COORDINATOR_ADDRESS)")
  parser.add_argument("--process_count", default=None,
                      help="number of processes (hosts) of the run (default: $JAX_NUM_PROCESSES)")
  parser.add_argument("--process_index", default=None,
                      help="this process's index, 0 .. process_count-1 (default: $JAX_PROCESS_ID)")
  parser.add_argument("--multiprocess_gpu", action="store_true",
                      help="multi-node GPU run (as T5X): needs --coordinator_address, "
                      "--process_count and --process_index (or their environment variables)")


def _int_setting(value: str, name: str, env: str) -> int:
  try:
    return int(value)
  except (TypeError, ValueError):
    raise UserError(f"--{name} (or ${env}) must be an integer, got {value!r}") from None


def resolve(args: Any, environ: Optional[Dict[str, str]] = None) -> Optional[Dict[str, Any]]:
  """The keyword arguments of `jax.distributed.initialize`, or None for a single-process run.

  Args:
    args: an argparse namespace after `add_arguments` (missing attributes count as unset).
    environ: the environment (default `os.environ`).
  """
  environ = os.environ if environ is None else environ
  distributed = bool(getattr(args, "distributed", False))
  gpu = bool(getattr(args, "multiprocess_gpu", False))
  given, sources = {}, {}
  for name, env in _SETTINGS:
    flag = getattr(args, name, None)
    if flag not in (None, ""):
      given[name], sources[name] = flag, f"--{name}"
    elif environ.get(env):
      given[name], sources[name] = environ[env], f"${env}"
  if not (distributed or gpu or given):
    return None
  missing = [f"--{n} (or ${e})" for n, e in _SETTINGS if n not in given]
  if not distributed and missing:
    why = "--multiprocess_gpu" if gpu else " and ".join(sources.values())
    raise UserError(f"{why} also needs {', '.join(missing)}; give all three, or use "
                    "--distributed alone where JAX detects the hosts (Cloud TPU, SLURM)")
  kwargs: Dict[str, Any] = {}
  if "coordinator_address" in given:
    address = str(given["coordinator_address"])
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
      raise UserError(f"{sources['coordinator_address']}={address!r} is not HOST:PORT; give "
                      "process 0's host and a free port, e.g. --coordinator_address=10.0.0.2:8476")
    kwargs["coordinator_address"] = address
  if "process_count" in given:
    count = _int_setting(given["process_count"], "process_count", "JAX_NUM_PROCESSES")
    if count < 1:
      raise UserError(f"{sources['process_count']}={count} must be at least 1")
    kwargs["num_processes"] = count
  if "process_index" in given:
    index = _int_setting(given["process_index"], "process_index", "JAX_PROCESS_ID")
    count = kwargs.get("num_processes")
    if index < 0 or (count is not None and index >= count):
      raise UserError(f"{sources['process_index']}={index} is outside 0..{(count or 1) - 1}; "
                      "number the processes 0 .. process_count-1")
    kwargs["process_id"] = index
  return kwargs


def initialize(args: Any, environ: Optional[Dict[str, str]] = None) -> bool:
  """Joins the multi-host run the flags (or environment) describe; False when single-process."""
  kwargs = resolve(args, environ)
  if kwargs is None:
    return False
  import jax
  # Collectives between CPU processes (tests, CPU clusters); accelerators use their own.
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  try:
    jax.distributed.initialize(**kwargs)
  except (RuntimeError, ValueError) as e:  # unreachable coordinator, timeout, already joined
    first = (str(e).strip().splitlines() or [type(e).__name__])[0]
    where = ", ".join(f"{k}={v}" for k, v in kwargs.items()) or "hosts detected by JAX"
    raise UserError(f"cannot join the multi-host run ({where}): {first}; start the same command "
                    "on every host with the same --coordinator_address and --process_count and "
                    "a distinct --process_index (docs/multihost.md)") from None
  return True


def check_same_on_hosts(what: str, *arrays: np.ndarray) -> None:
  """Raises a UserError naming the hosts whose `arrays` differ from process 0's.

  Compares a checksum gathered from every process (a no-op with one), for
  values every host computes on its own and must agree on, e.g. XPrompt's masks.
  """
  import jax
  if jax.process_count() == 1:
    return
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  digest = hashlib.sha256()
  for a in arrays:
    a = np.ascontiguousarray(a)
    digest.update(str((a.dtype, a.shape)).encode())
    digest.update(a.tobytes())
  local = np.frombuffer(digest.digest()[:16], np.int32)
  gathered = np.asarray(multihost_utils.process_allgather(local)).reshape(jax.process_count(), -1)
  differ = [i for i in range(len(gathered)) if not np.array_equal(gathered[i], gathered[0])]
  if differ:
    raise UserError(f"{what} differ between hosts: process(es) {differ} disagree with process 0; "
                    "every host must read the same data and run the same configuration (same gin "
                    "files, flags and package version on every host)")


def sync(name: str) -> None:
  """Waits until every process reaches `sync(name)` (no-op with one process).

  Before a host reads a file that process 0 wrote during the same run
  (`fs.write_on_first_host`), so it never reads a missing or older file.
  """
  import jax
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    multihost_utils.sync_global_devices(name)
