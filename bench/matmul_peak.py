"""Measured float32 matmul peak of this CPU through XLA (the roofline for the MFU figure).

Prints one JSON line: the best GFLOP/s of a jitted `[n, n] @ [n, n]` over a few
sizes, each timed as the best of several runs.
"""
import json
import time

import jax
import jax.numpy as jnp


def matmul_gflops(n: int, repeats: int = 5) -> float:
  a = jax.random.normal(jax.random.PRNGKey(0), (n, n), jnp.float32)
  b = jax.random.normal(jax.random.PRNGKey(1), (n, n), jnp.float32)
  f = jax.jit(lambda x, y: x @ y)
  f(a, b).block_until_ready()
  best = float("inf")
  for _ in range(repeats):
    start = time.perf_counter()
    f(a, b).block_until_ready()
    best = min(best, time.perf_counter() - start)
  return 2 * n ** 3 / best / 1e9


def main() -> None:
  sizes = (512, 1024, 2048)
  by_size = {n: matmul_gflops(n) for n in sizes}
  print(json.dumps({"benchmark": "matmul_peak", "dtype": "float32",
                    "gflops_by_size": {str(k): round(v, 1) for k, v in by_size.items()},
                    "peak_gflops": max(by_size.values())}), flush=True)


if __name__ == "__main__":
  main()
