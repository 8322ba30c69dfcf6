"""`make bench`: every benchmark in its own process, results to bench/results.json and a table.

The PEFT comparison runs in its own virtualenv (`.bench_venv/` at the repo root,
created on first use with torch 2.13.0 CPU, transformers<5 and peft; `make peft_venv`). torch's CPU
wheel comes from `--find-links` (`PEFT_TORCH_FIND_LINKS`, default `/opt/wheels`
when present) or PyTorch's CPU index (`PEFT_TORCH_INDEX`); plain `torch` from
PyPI would pull the CUDA build. Both frameworks use the same thread count.

Every process (ours and PEFT alike) runs with the Makefile's `GLIBC_TUNABLES`
(`HUGE_PAGES`: transparent huge pages for malloc's large blocks): with 4 KiB
pages both frameworks spend a tenth of each step in page faults on freshly
mapped activation buffers. One pair of runs without it is recorded for comparison
(`*_default_malloc`).

`bench/bucketing_throughput.py` (realistic lengths: BoolQ-like and skewed) runs its
contenders (packed, bucketed, padded, PEFT) in alternating processes itself and reports medians
over rounds; `bench/train_throughput.py` does the same end to end, through `prompt-tuning train`
with the default run file.

Usage: python bench/run_all.py [--steps N] [--quick] [--skip_peft]
"""
import argparse
import json
import os
import subprocess
import sys
import time
from typing import Any, Dict, List, Optional

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH_VENV = os.path.join(REPO, ".bench_venv")
RESULTS = os.path.join(REPO, "bench", "results.json")
# glibc's malloc as the Makefile sets it (docs/performance.md, "Host allocator"): huge pages
# for large blocks (glibc >= 2.35, madvise(MADV_HUGEPAGE)); ignored elsewhere.
HUGE_PAGES = {"GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"}
SHAPES = ["--batch_size", "8", "--inputs_length", "128", "--prompt_length", "100",
          "--targets_length", "8"]


def _json_line(cmd: List[str], env: Optional[Dict[str, str]] = None) -> Dict[str, Any]:
  """Runs `cmd`, returns the last JSON line it printed (or the error)."""
  start = time.time()
  full_env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
  if env is None:
    full_env.update(HUGE_PAGES)
  else:  # the caller's environment only; `{}` means glibc's default malloc
    full_env.pop("GLIBC_TUNABLES", None)
    full_env.update(env)
  proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env=full_env)
  for line in reversed(proc.stdout.strip().splitlines()):
    if line.startswith("{"):
      result = json.loads(line)
      result["process_wall_s"] = round(time.time() - start, 1)
      return result
  return {"error": (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"],
          "command": " ".join(cmd)}


def ours(*args: str, steps: int, env: Optional[Dict[str, str]] = None) -> Dict[str, Any]:
  return _json_line([sys.executable, "-m", "prompt_tuning", "bench", *args,
                     "--steps", str(steps)], env)


def ensure_peft_venv() -> str:
  python = os.path.join(BENCH_VENV, "bin", "python")
  if os.path.exists(os.path.join(BENCH_VENV, ".installed")):
    return python
  subprocess.run([sys.executable, "-m", "venv", BENCH_VENV], check=True)
  torch_source = []
  links = os.environ.get("PEFT_TORCH_FIND_LINKS", "/opt/wheels" if os.path.isdir("/opt/wheels") else "")
  if links:
    torch_source = ["--find-links", links]
  else:
    torch_source = ["--extra-index-url",
                    os.environ.get("PEFT_TORCH_INDEX", "https://download.pytorch.org/whl/cpu")]
  subprocess.run([python, "-m", "pip", "install", "-q", *torch_source, "torch==2.13.0+cpu",
                  "transformers<5", "peft"], check=True)
  open(os.path.join(BENCH_VENV, ".installed"), "w").close()
  return python


def _threads() -> int:
  return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def main() -> None:
  parser = argparse.ArgumentParser()
  parser.add_argument("--steps", type=int, default=10)
  parser.add_argument("--quick", action="store_true", help="fewer steps and sweep points")
  parser.add_argument("--skip_peft", action="store_true")
  args = parser.parse_args()
  steps = 3 if args.quick else args.steps
  sweep_steps = 2 if args.quick else 3
  threads = _threads()
  results: Dict[str, Any] = {"threads": threads, "started": time.strftime("%Y-%m-%d %H:%M:%S")}

  def record(key, value):
    results[key] = value
    print(f"{key}: {json.dumps(value)}", flush=True)
    with open(RESULTS, "w") as f:
      json.dump(results, f, indent=1)

  record("matmul_peak", _json_line([sys.executable, "bench/matmul_peak.py"]))
  record("ours_small", ours("--size", "small", *SHAPES, steps=steps))
  if not args.skip_peft:
    python = ensure_peft_venv()
    record("peft_small", _json_line([python, "bench/peft_step.py", *SHAPES, "--steps", str(steps),
                                     "--threads", str(threads)]))
    record("peft_small_default_malloc",
           _json_line([python, "bench/peft_step.py", *SHAPES, "--steps", str(steps),
                       "--threads", str(threads)], env={}))
  record("ours_small_default_malloc", ours("--size", "small", *SHAPES, steps=steps, env={}))
  for policy in ("full", "dots"):
    record(f"ours_small_remat_{policy}",
           ours("--size", "small", *SHAPES, "--remat", policy, steps=steps))
  record("ours_small_frozen_bf16",
         ours("--size", "small", *SHAPES, "--frozen_dtype", "bfloat16", steps=steps))
  record("ours_base_compile", ours("--size", "base", *SHAPES, steps=1))
  for classes in (2, 5):
    record(f"eval_throughput_{classes}_classes",
           _json_line([sys.executable, "bench/eval_throughput.py", *SHAPES, "--classes",
                       str(classes), "--repeats", "3" if args.quick else "5"]))
  # Realistic (BoolQ) lengths: packed vs bucketed vs padded to 512 vs PEFT's dynamic padding,
  # the same examples; then a skewed length distribution (packed, bucketed, PEFT).
  realistic = ["--steps", "10", "--repeats", "1"] if args.quick else ["--steps", "50",
                                                                      "--repeats", "3"]
  peft = [] if args.skip_peft else ["--peft_python", ensure_peft_venv()]
  record("bucketing_throughput", _json_line(
      [sys.executable, "bench/bucketing_throughput.py", *realistic, *peft]))
  record("bucketing_throughput_skewed", _json_line(
      [sys.executable, "bench/bucketing_throughput.py", *realistic, *peft,
       "--distribution", "skewed", "--arms", "packed", "bucketed"]))
  # End to end: `prompt-tuning train` with the default run file against PEFT (random and
  # length-grouped batches) on both distributions, and the other of packing and bucketing.
  end_to_end = ["--steps", "6", "--repeats", "1"] if args.quick else ["--steps", "20",
                                                                      "--repeats", "3"]
  for distribution in ("boolq", "skewed"):
    record(f"train_throughput_{distribution}", _json_line(
        [sys.executable, "bench/train_throughput.py", *end_to_end, *peft,
         "--distribution", distribution]))
  prompt_lengths = (1, 100) if args.quick else (1, 20, 100, 150)
  record("prompt_length_sweep", [
      ours("--size", "small", *SHAPES[:-4], "--prompt_length", str(p), "--targets_length", "8",
           steps=sweep_steps) for p in prompt_lengths])
  batch_sizes = (1, 8) if args.quick else (1, 4, 8, 16)
  record("batch_size_sweep", [
      ours("--size", "small", "--batch_size", str(b), *SHAPES[2:], steps=sweep_steps)
      for b in batch_sizes])

  summary = derived(results)
  record("derived", summary)
  print(table(results))


def derived(results: Dict[str, Any]) -> Dict[str, Any]:
  """Ratios and the fraction of the matmul peak."""
  out: Dict[str, Any] = {}
  ours_s, peft = results.get("ours_small", {}), results.get("peft_small", {})
  if "median_step_s" in ours_s and "median_step_s" in peft:
    out["peft_over_ours_median_step"] = peft["median_step_s"] / ours_s["median_step_s"]
    out["peft_over_ours_min_step"] = peft["min_step_s"] / ours_s["min_step_s"]
  ours_d = results.get("ours_small_default_malloc", {})
  peft_d = results.get("peft_small_default_malloc", {})
  if "median_step_s" in ours_d and "median_step_s" in peft_d:
    out["peft_over_ours_median_step_default_malloc"] = (peft_d["median_step_s"]
                                                        / ours_d["median_step_s"])
  peak = results.get("matmul_peak", {}).get("peak_gflops")
  for key in ("ours_small", "ours_small_default_malloc", "ours_small_frozen_bf16"):
    r = results.get(key, {})
    if peak and r.get("flops_per_step"):
      out[f"{key}_fraction_of_matmul_peak"] = r["flops_per_step"] / r["median_step_s"] / 1e9 / peak
      out[f"{key}_fraction_of_matmul_peak_best_step"] = (
          r["flops_per_step"] / r["min_step_s"] / 1e9 / peak)
  return out


def table(results: Dict[str, Any]) -> str:
  rows = ["| run | median step s | min step s | compile s | peak RSS MB |", "|---|---|---|---|---|"]
  for key in ("ours_small", "peft_small", "ours_small_default_malloc", "peft_small_default_malloc",
              "ours_small_remat_full", "ours_small_remat_dots", "ours_small_frozen_bf16",
              "ours_base_compile"):
    r = results.get(key, {})
    if "median_step_s" in r:
      rows.append(f"| {key} | {r['median_step_s']:.3f} | {r['min_step_s']:.3f} | "
                  f"{r.get('compile_s', r.get('first_step_s', float('nan'))):.1f} | "
                  f"{r['peak_rss_mb']:.0f} |")
  return "\n".join(rows)


if __name__ == "__main__":
  main()
