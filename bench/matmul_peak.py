"""Measured matmul peak of this device through XLA (the roofline for the MFU figure).

Prints one JSON line: the best GFLOP/s of a jitted `[n, n] @ [n, n]` over a few
sizes, each timed as the best of several runs. Defaults: float32 at 512-2048 (a
CPU); on a GPU use e.g. `--dtype bfloat16 --sizes 4096 8192` (bench/run_gpu.py).
"""
import argparse
import json
import time

import jax
import jax.numpy as jnp


def matmul_gflops(n: int, repeats: int = 5, dtype=jnp.float32) -> float:
  a = jax.random.normal(jax.random.PRNGKey(0), (n, n), dtype)
  b = jax.random.normal(jax.random.PRNGKey(1), (n, n), dtype)
  f = jax.jit(lambda x, y: x @ y)
  f(a, b).block_until_ready()
  best = float("inf")
  for _ in range(repeats):
    start = time.perf_counter()
    f(a, b).block_until_ready()
    best = min(best, time.perf_counter() - start)
  return 2 * n ** 3 / best / 1e9


def main() -> None:
  parser = argparse.ArgumentParser()
  parser.add_argument("--dtype", default="float32")
  parser.add_argument("--sizes", type=int, nargs="+", default=[512, 1024, 2048])
  parser.add_argument("--repeats", type=int, default=5)
  args = parser.parse_args()
  by_size = {n: matmul_gflops(n, args.repeats, jnp.dtype(args.dtype)) for n in args.sizes}
  print(json.dumps({"benchmark": "matmul_peak", "dtype": args.dtype,
                    "device": jax.devices()[0].device_kind,
                    "gflops_by_size": {str(k): round(v, 1) for k, v in by_size.items()},
                    "peak_gflops": max(by_size.values())}), flush=True)


if __name__ == "__main__":
  main()
