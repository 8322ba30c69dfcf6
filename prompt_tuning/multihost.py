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
  sync(f"{what} computed")  # the gather may be the first collective: hosts arrive together
  gathered = np.asarray(multihost_utils.process_allgather(local)).reshape(jax.process_count(), -1)
  differ = [i for i in range(len(gathered)) if not np.array_equal(gathered[i], gathered[0])]
  if differ:
    raise UserError(f"{what} differ between hosts: process(es) {differ} disagree with process 0; "
                    "every host must read the same data and run the same configuration (same gin "
                    "files, flags and package version on every host)")


# Long enough for the slowest host to finish a big compile or checkpoint read.
BARRIER_TIMEOUT_S = 3600
_barrier_count = 0
_warm_meshes = set()


def to_host(x: Any) -> np.ndarray:
  """A replicated (or fully addressable) array as numpy on this host; gathers otherwise."""
  if getattr(x, "is_fully_replicated", False):
    return np.asarray(x.addressable_data(0))
  if getattr(x, "is_fully_addressable", True):
    return np.asarray(x)
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def sync(name: str, timeout_s: int = BARRIER_TIMEOUT_S) -> None:
  """Waits until every process reaches `sync(name)` (no-op with one process).

  Before a host reads a file that process 0 wrote during the same run
  (`fs.write_on_first_host`), so it never reads a missing or older file. The
  barrier is the coordination service's, not a collective: a collective's
  first use on CPU (gloo) gives up after a fixed 30 s, shorter than one host's
  compile can lag behind another's.
  """
  import jax
  if jax.process_count() == 1:
    return
  from jax._src import distributed  # pylint: disable=g-import-not-at-top
  global _barrier_count
  _barrier_count += 1  # every host calls the same sequence, so the ids agree
  try:
    distributed.global_state.client.wait_at_barrier(f"{name}#{_barrier_count}",
                                                    timeout_in_ms=timeout_s * 1000)
  except Exception as e:  # pylint: disable=broad-except
    first = (str(e).strip().splitlines() or [type(e).__name__])[0]
    raise UserError(f"hosts did not all reach {name!r} within {timeout_s} s ({first}); a host "
                    "failed or is stuck: read every host's log") from None


def open_collectives(mesh) -> None:
  """Sets up, on every host at once, the CPU collectives `mesh`'s programs use.

  Gloo builds a communicator for each group of devices on its first
  collective and waits only 30 s there for the other hosts, whatever
  `--xla_cpu_collective_timeout_seconds` says; later collectives on the same
  group wait as long as that flag allows. A host that compiles the train step
  slower than the others (a busy machine) would fail there. So behind a
  barrier, one tiny all-reduce over each combination of mesh axes (the device
  groups SPMD partitioning communicates in) builds every communicator first. Runs once
  per mesh; a no-op with one process or on accelerators (their own collectives).
  """
  import itertools  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from jax.sharding import NamedSharding, PartitionSpec  # pylint: disable=g-import-not-at-top
  devices = mesh.devices
  key = (tuple(d.id for d in devices.flat), devices.shape)
  if jax.process_count() == 1 or devices.flat[0].platform != "cpu" or key in _warm_meshes:
    return
  sync("open collectives")
  sizes = dict(zip(mesh.axis_names, devices.shape))
  for count in range(1, len(sizes) + 1):
    for group in itertools.combinations(mesh.axis_names, count):
      # One value per device of each group, summed: an all-reduce over exactly those groups.
      ones = np.ones(int(np.prod([sizes[a] for a in group])), np.float32)
      spread = jax.make_array_from_callback(ones.shape, NamedSharding(mesh, PartitionSpec(group)),
                                            lambda index, ones=ones: ones[index])
      jax.jit(jnp.sum, out_shardings=NamedSharding(mesh, PartitionSpec()))(spread).block_until_ready()
  _warm_meshes.add(key)
