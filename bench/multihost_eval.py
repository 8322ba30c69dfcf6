"""Eval wall time against the number of processes (hosts), on one machine.

Runs the toy task's evaluation (greedy decoding + metrics over the 512-example
`train` split of `toy_parity`, random toy backbone) in P processes of one CPU
device each (gloo, 127.0.0.1), for P in `--processes`, interleaved `--rounds`
times; each process evaluates its shard of every global batch. Prints one JSON
line: the median seconds of one evaluation per P (after a compiling warm-up)
and the metrics (equal for every P). On a shared machine the processes compete
for the same cores: read the numbers as a check that the work is split, not as
a pod's speed-up.

    python bench/multihost_eval.py --processes 1 2 --rounds 3
"""
import argparse
import json
import os
import socket
import statistics
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_WORKER = r"""
import json, sys, time
from prompt_tuning import configurables, multihost
if int(sys.argv[2]) > 1:
  multihost.initialize(type("Args", (), dict(coordinator_address=sys.argv[1],
                                            process_count=sys.argv[2], process_index=sys.argv[3]))())
from prompt_tuning.train import evaluation
from prompt_tuning.train.run_setup import build_run
lengths = {"inputs": 16, "targets": 8}
configurables.parse(["models/t5_1_1_toy_prompt.gin"], [])
ctx = build_run(mixture_or_task_names=["toy_parity"],
                mixture_or_task_module="prompt_tuning.data.toy_tasks", task_feature_lengths=lengths)
fns = evaluation.EvalModelFns(ctx.model, ctx.partitioner, ctx.variables, ctx.shardings,
                              batch_size=64, max_decode_length=lengths["targets"],
                              inputs_length=lengths["inputs"])
evaluator = evaluation.make_evaluator("toy_parity", lengths, "train")
evaluation.run_evaluation(evaluator, fns, 0)  # compiles
times = []
for _ in range(int(sys.argv[4])):
  start = time.perf_counter()
  metrics = evaluation.run_evaluation(evaluator, fns, 0)
  times.append(time.perf_counter() - start)
import jax
if jax.process_index() == 0:
  print("RESULT" + json.dumps({"seconds": min(times), "metrics": metrics}), flush=True)
"""


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def run(processes: int, repeats: int) -> dict:
  address = f"127.0.0.1:{_free_port()}"
  env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=1",
         "JAX_PLATFORMS": "cpu", "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": REPO}
  procs = [subprocess.Popen([sys.executable, "-c", _WORKER, address, str(processes), str(i),
                             str(repeats)], cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True) for i in range(processes)]
  outputs = [p.communicate() for p in procs]
  for p, (_, err) in zip(procs, outputs):
    if p.returncode:
      raise RuntimeError(err[-3000:])
  return json.loads(outputs[0][0].split("RESULT")[-1])


def main() -> None:
  parser = argparse.ArgumentParser()
  parser.add_argument("--processes", type=int, nargs="+", default=[1, 2])
  parser.add_argument("--rounds", type=int, default=3)
  parser.add_argument("--repeats", type=int, default=2, help="timed evaluations per launch")
  args = parser.parse_args()
  seconds = {p: [] for p in args.processes}
  metrics = {}
  for _ in range(args.rounds):
    for p in args.processes:
      result = run(p, args.repeats)
      seconds[p].append(result["seconds"])
      metrics[p] = result["metrics"]
  print(json.dumps({"benchmark": "multihost_eval", "examples": 512,
                    "median_eval_s": {str(p): statistics.median(s) for p, s in seconds.items()},
                    "all_eval_s": {str(p): s for p, s in seconds.items()},
                    "metrics_equal": all(m == metrics[args.processes[0]] for m in metrics.values()),
                    "metrics": metrics[args.processes[0]]}))


if __name__ == "__main__":
  main()
