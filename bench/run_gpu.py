"""The benchmarks on one GPU: ours vs HF PEFT, each in its own process, JSON to `--out`.

Runs where a CUDA jax and a CUDA torch (with transformers and peft) are both
installed, e.g. the lent H100/H200 machines (see bench/README.md, "GPU"):

* `matmul_peak_*`: the bf16 and f32 (TF32) `[n, n] @ [n, n]` roofline through XLA;
* `ours_<size>_<dtype>` / `peft_<size>_<dtype>`: one prompt-tuning train step at
  equal shapes (prompt 100, inputs 128, targets 8, `--batch_size`), bf16 = both
  activations and frozen weights in bf16; float32 = TF32 matmuls on both sides.
  Every size in the first dtype, the first size in the others;
* `eval_throughput_<C>_classes`: one-pass rank classification vs per-class vs greedy;
* `bucketing_throughput`: realistic (BoolQ) lengths, ours bucketed vs padded vs
  PEFT's dynamic padding, on batches grouped beforehand (`--batches`, made with
  `bucketing_throughput.py --save_batches` where TensorFlow is installed).

Each line is also printed as it finishes; a run that fails or passes
`--timeout` is recorded with its error and the rest go on.

Usage: python bench/run_gpu.py --out results_gpu.json [--batches boolq_batches.npz] [--quick]
"""
import argparse
import json
import os
import subprocess
import sys
import time
from typing import Any, Dict, List

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
SHAPES = ["--inputs_length", "128", "--prompt_length", "100", "--targets_length", "8"]


def json_line(cmd: List[str], timeout: float) -> Dict[str, Any]:
  """Runs `cmd` from the repo root; its last JSON line, or the error."""
  start = time.time()
  env = {**os.environ, "PYTHONPATH": os.pathsep.join(
      p for p in (REPO, os.environ.get("PYTHONPATH")) if p)}
  try:
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env=env,
                          timeout=timeout)
  except subprocess.TimeoutExpired:
    return {"error": f"timed out after {timeout:.0f} s", "command": " ".join(cmd)}
  for line in reversed(proc.stdout.strip().splitlines()):
    if line.startswith("{"):
      return {**json.loads(line), "process_wall_s": round(time.time() - start, 1)}
  return {"error": ((proc.stderr or proc.stdout).strip().splitlines() or ["no output"])[-3:],
          "command": " ".join(cmd)}


def plan(args) -> Dict[str, List[str]]:
  """Name -> command, most important first (a cut-short run keeps what came first)."""
  py, steps = sys.executable, str(args.steps)
  runs: Dict[str, List[str]] = {
      f"matmul_peak_{dtype}": [py, "bench/matmul_peak.py", "--dtype", dtype,
                               "--sizes", "4096", "8192"] for dtype in args.dtypes}

  def step_pair(size: str, dtype: str) -> None:
    frozen = ["--frozen_dtype", "bfloat16"] if dtype == "bfloat16" else []
    batch = ["--batch_size", str(args.batch_size), *SHAPES, "--steps", steps]
    runs[f"ours_{size}_{dtype}"] = [py, "-m", "prompt_tuning", "bench", "--size", size,
                                    "--dtype", dtype, *frozen, *batch]
    runs[f"peft_{size}_{dtype}"] = [py, "bench/peft_step.py", "--size", size, "--dtype", dtype,
                                    "--device", "cuda", *batch]

  step_pair(args.sizes[0], args.dtypes[0])
  for classes in (2, 5):
    runs[f"eval_throughput_{classes}_classes"] = [
        py, "bench/eval_throughput.py", "--size", args.sizes[0], "--dtype", args.dtypes[0],
        "--batch_size", str(args.batch_size), *SHAPES, "--classes", str(classes),
        "--repeats", "5"]
  if args.batches:
    runs["bucketing_throughput"] = [
        py, "bench/bucketing_throughput.py", "--batches", args.batches, "--size", args.sizes[0],
        "--dtype", args.dtypes[0], "--device", "cuda", "--peft_python", py, "--repeats", "1"]
  for size in args.sizes[1:]:
    step_pair(size, args.dtypes[0])
  for dtype in args.dtypes[1:]:
    step_pair(args.sizes[0], dtype)
  return runs


def derived(results: Dict[str, Any]) -> Dict[str, Any]:
  """PEFT / ours step time and the fraction of the matmul peak of each of our steps."""
  out: Dict[str, Any] = {}
  for key, ours in results.items():
    if not key.startswith("ours_") or "median_step_s" not in ours:
      continue
    peft = results.get("peft_" + key[len("ours_"):], {})
    if "median_step_s" in peft:
      out[f"peft_over_ours_{key[5:]}"] = peft["median_step_s"] / ours["median_step_s"]
    peak = results.get(f"matmul_peak_{ours['dtype']}", {}).get("peak_gflops")
    if peak and ours.get("flops_per_step"):
      out[f"{key}_fraction_of_matmul_peak"] = ours["flops_per_s"] / 1e9 / peak
  return out


def main() -> None:
  parser = argparse.ArgumentParser()
  parser.add_argument("--out", required=True)
  parser.add_argument("--sizes", nargs="+", default=["base", "large"])
  parser.add_argument("--dtypes", nargs="+", default=["bfloat16", "float32"])
  parser.add_argument("--batch_size", type=int, default=32)
  parser.add_argument("--steps", type=int, default=20)
  parser.add_argument("--batches", default=None)
  parser.add_argument("--timeout", type=float, default=180)
  parser.add_argument("--only", nargs="*", default=None, help="run only these names")
  args = parser.parse_args()
  results: Dict[str, Any] = {"started": time.strftime("%Y-%m-%d %H:%M:%S")}
  for name, cmd in plan(args).items():
    if args.only and name not in args.only:
      continue
    results[name] = json_line(cmd, args.timeout)
    print(f"{name}: {json.dumps(results[name])}", flush=True)
    results["derived"] = derived(results)
    with open(args.out, "w") as f:
      json.dump(results, f, indent=1)
  print(json.dumps(results["derived"], indent=1), flush=True)


if __name__ == "__main__":
  main()
