"""InfoPrompt: the InfoNCE estimator against known MI, per-example sampling,
the heads' parameters and gradients, the prompt generator and the config."""
import functools
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import flax.linen as nn
import gin
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import traverse_util

from prompt_tuning.errors import UserError
from prompt_tuning.methods.infoprompt import estimators, loss, modules, representations, sampling
from prompt_tuning.train import partitioning

REPO = Path(__file__).resolve().parents[1]
EPS32 = float(np.finfo(np.float32).eps)
B, P, L, E, K = 8, 3, 7, 8, 6


def _tol(magnitude, terms):
  """Float32 reassociation bound: `terms` roundings, each `eps · magnitude`."""
  return 4 * terms * EPS32 * magnitude


# ----------------------------------------------------------------------------- estimator

def _gaussian_pairs(rng, n, d, rho):
  """`n` pairs (x, y) of `d` independent coordinates, each standard bivariate normal, corr rho."""
  x = rng.standard_normal((n, d))
  y = rho * x + np.sqrt(1 - rho ** 2) * rng.standard_normal((n, d))
  return x, y


def _optimal_critic(x, y, rho):
  """`log p(y | x) / p(y)`, the optimal InfoNCE critic, in closed form (float64)."""
  v = 1 - rho ** 2
  return np.sum(-0.5 * np.log(v) - (y - rho * x) ** 2 / (2 * v) + y ** 2 / 2, axis=-1)


def _scores(rng, n, d, rho, k, chunk=512):
  """Optimal-critic scores of `n` positive pairs and `k - 1` independent negatives each.

  Computed in float64 in chunks (bounded memory), returned as float32
  `[n]`, `[n, k - 1]`; the negatives y_j ~ p(y) are independent of x.
  """
  positive, negative = [], []
  for start in range(0, n, chunk):
    x, y = _gaussian_pairs(rng, min(chunk, n - start), d, rho)
    negatives = rng.standard_normal((len(x), k - 1, d))
    positive.append(_optimal_critic(x, y, rho))
    negative.append(_optimal_critic(x[:, None, :], negatives, rho))
  return (np.concatenate(positive).astype(np.float32),
          np.concatenate(negative).astype(np.float32))


@pytest.mark.parametrize("d, rho, k", [
    (4, 0.5, 1024),   # I = 0.58 nats << log K = 6.93: the estimate recovers I
    (2, 0.8, 512),    # I = 1.02 nats <  log K = 6.24
    (16, 0.95, 64),   # I = 18.6 nats >> log K = 4.16: the estimate saturates at log K
])
def test_info_nce_with_the_optimal_critic_recovers_min_of_mi_and_log_k(d, rho, k):
  n = 4096
  positive, negative = _scores(np.random.default_rng(0), n, d, rho, k)
  est = np.asarray(estimators.info_nce(positive, negative), np.float64)
  mi = -d / 2 * np.log(1 - rho ** 2)
  log_k = np.log(k)
  # Bias of E[est] below min(I, log K) (Jensen over the negatives given (x, y),
  # then closed forms for Gaussians):
  #   I − E[est]     <= log(1 + (E_p[e^f] − 1) / K),  E_p[e^f] = (1 − ρ²)^−d = e^{2I};
  #   log K − E[est] <= E_p[log(1 + (K−1) e^−f)] <= 2 √(K−1) E_p[e^{−f/2}]   (log(1+u) <= 2√u),
  #   E_p[e^{−f/2}] = Bhattacharyya coefficient = (2 (1−ρ²)^¼ / √(4−ρ²))^d.
  bias_mi = np.log1p(np.expm1(2 * mi) / k)
  bias_log_k = 2 * np.sqrt(k - 1) * (2 * (1 - rho ** 2) ** 0.25 / np.sqrt(4 - rho ** 2)) ** d
  lower = max(mi - bias_mi, log_k - bias_log_k)
  upper = min(mi, log_k)  # InfoNCE is a lower bound on I and each estimate is <= log K
  assert upper - lower < 0.02, "the setting must pin the expectation down"
  # Monte Carlo: 4 standard errors (fixed seed, so not flaky). Float32: each
  # score difference is rounded (eps·2·max|score|) and the log-sum-exp sums K terms.
  mc = 4 * est.std() / np.sqrt(n)
  fp = 4 * EPS32 * (2 * max(np.abs(negative).max(), np.abs(positive).max()) + k)
  assert lower - mc - fp <= est.mean() <= upper + mc + fp, (est.mean(), lower, upper, mc)
  assert np.all(est <= np.float32(log_k))


def test_info_nce_of_independent_variables_is_zero():
  n, k = 4096, 64
  rng = np.random.default_rng(1)
  # The optimal critic of independent variables is constant; any constant gives 0.
  offset = rng.uniform(-1e3, 1e3, (n,)).astype(np.float32)
  est = np.asarray(estimators.info_nce(offset, np.repeat(offset[:, None], k - 1, axis=1)))
  np.testing.assert_allclose(est, 0.0, atol=_tol(np.log(k), k))
  # A critic that believes in a correlation (ρ = 0.5) finds none: E[est] <= I = 0.
  x, y = _gaussian_pairs(rng, n, 4, 0.0)
  negatives = rng.standard_normal((n, k - 1, 4))
  est = np.asarray(estimators.info_nce(
      _optimal_critic(x, y, 0.5).astype(np.float32),
      _optimal_critic(x[:, None, :], negatives, 0.5).astype(np.float32)))
  assert est.mean() <= 4 * est.std() / np.sqrt(n)


@pytest.mark.parametrize("scale", [1e2, 1e4, 1e15, 1e30, 3e38])
def test_info_nce_never_exceeds_log_k(scale):
  rng = np.random.default_rng(2)
  big = float(np.finfo(np.float32).max)

  def scores(shape):  # finite float32 scores of magnitude ~scale
    return np.clip(rng.standard_normal(shape) * scale, -big, big).astype(np.float32)

  positive, negative = scores(256), scores((256, K - 1))
  # Adversarial: the positive far above every negative (the bound's edge) ...
  positive[:64], negative[:64] = np.float32(scale), np.float32(-scale)
  # ... and ties: all K candidates equal (estimate exactly 0).
  positive[64:96], negative[64:96] = np.float32(scale), np.float32(scale)
  est = np.asarray(estimators.info_nce(positive, negative))
  assert not np.any(np.isnan(est))
  assert np.all(est <= np.float32(np.log(K)))
  np.testing.assert_array_equal(est[:64], np.float32(np.log(K)))
  np.testing.assert_allclose(est[64:96], 0.0, atol=_tol(np.log(K), K))
  if scale <= 1e30:  # score differences are finite, so are the estimates
    assert np.all(np.isfinite(est))


def test_masked_negatives_shrink_k():
  rng = np.random.default_rng(3)
  positive = rng.standard_normal(5).astype(np.float32)
  negative = rng.standard_normal((5, 4)).astype(np.float32)
  mask = np.array([[1, 1, 1, 1], [1, 1, 0, 0], [0, 1, 0, 0], [0, 0, 0, 0], [1, 0, 1, 0]], bool)
  est = np.asarray(estimators.info_nce(positive, negative, mask))
  for b in range(5):
    kept = negative[b, mask[b]]
    expected = np.log(1 + len(kept)) + positive[b] - np.logaddexp.reduce(
        np.concatenate([[positive[b]], kept]).astype(np.float64))
    np.testing.assert_allclose(est[b], expected, atol=_tol(4.0, 8))
  assert est[3] == 0.0  # no negatives: K = 1, log K = 0


# ----------------------------------------------------------------------------- sampling

def test_context_positions_are_valid_distinct_and_independent_of_padding():
  keys = sampling.example_keys(jax.random.PRNGKey(0), jnp.arange(4))
  lengths = np.array([7, 3, 0, 5])
  valid = np.arange(L)[None, :] < lengths[:, None]
  sample = jax.jit(sampling.sample_context_positions, static_argnums=2)
  positions, mask = map(np.asarray, sample(keys, jnp.asarray(valid), 5))
  np.testing.assert_array_equal(mask, (lengths > 0)[:, None].repeat(5, 1))
  for b in (0, 1, 3):
    assert np.all(positions[b] < lengths[b])
    n = lengths[b]
    counts = np.bincount(positions[b], minlength=n)
    # Without replacement, cycled when the context is shorter than K - 1.
    assert counts.max() - counts.min() <= 1 and counts.max() == -(-5 // n)
    first = positions[b][:min(n, 5)]
    assert len(set(first.tolist())) == len(first)
    np.testing.assert_array_equal(positions[b], first[np.arange(5) % len(first)])
  # More trailing padding draws the same positions.
  wider = np.concatenate([valid, np.zeros((4, 9), bool)], axis=1)
  wide_positions, _ = sample(keys, jnp.asarray(wider), 5)
  np.testing.assert_array_equal(np.asarray(wide_positions), positions)
  # Different examples draw different permutations.
  keys = sampling.example_keys(jax.random.PRNGKey(0), jnp.arange(64))
  many, _ = sample(keys, jnp.ones((64, L), bool), L)
  assert len({tuple(row) for row in np.asarray(many)}) > 32


def _inputs(seed=0, batch=B):
  rng = np.random.default_rng(seed)
  lengths = rng.integers(2, L + 1, batch)
  lengths[1] = 2  # shorter than K - 1: negatives cycle
  return {
      "prompt": jnp.asarray(rng.standard_normal((P, E)), jnp.float32),
      "z": jnp.asarray(rng.standard_normal((batch, E)), jnp.float32),
      "z_prime": jnp.asarray(rng.standard_normal((batch, E)), jnp.float32),
      "input_embeddings": jnp.asarray(rng.standard_normal((batch, L, E)), jnp.float32),
      "input_valid": jnp.asarray(np.arange(L)[None, :] < lengths[:, None]),
      "theta": jnp.asarray(rng.standard_normal((batch, E)), jnp.float32),
      "example_ids": jnp.asarray(rng.permutation(1000)[:batch], jnp.int32),
  }


def _features(inputs):
  return {"prompt": inputs["prompt"],
          "decoder_hidden": jnp.stack([inputs["z"]] * 2, axis=1),
          "encoded": jnp.concatenate([jnp.zeros((B, P, E)), inputs["input_embeddings"]], axis=1),
          "encoder_valid": jnp.concatenate([jnp.ones((B, P), bool), inputs["input_valid"]], axis=1),
          "input_embeddings": inputs["input_embeddings"],
          "input_valid": inputs["input_valid"]}


def _params(config, seed=0):
  variables = loss.make_heads(config).init(jax.random.PRNGKey(seed), _features(_inputs()))
  return nn.meta.unbox(variables)["params"]


def _estimates(config, params, inputs, key=jax.random.PRNGKey(7)):
  """Eager (op-by-op compiles are shared by the many small tests)."""
  return loss.mutual_information(config, params, key=key, **inputs)


@functools.partial(jax.jit, static_argnums=0)
def _jitted_estimates(config, params, inputs, key=jax.random.PRNGKey(7)):
  """Jitted, as in the train step."""
  return loss.mutual_information(config, params, key=key, **inputs)


def _take(inputs, index):
  return {k: (v if k == "prompt" else v[index]) for k, v in inputs.items()}


@pytest.mark.parametrize("context_negatives", ["sampled", "all"])
def test_estimates_do_not_depend_on_batch_order_or_microbatching(context_negatives):
  config = loss.InfoPromptConfig(num_negatives=K, context_negatives=context_negatives)
  params, inputs = _params(config), _inputs()
  fn = functools.partial(_jitted_estimates, config)
  whole = fn(params, inputs)
  perm = np.random.default_rng(4).permutation(B)
  permuted = fn(params, _take(inputs, perm))
  halves = [fn(params, _take(inputs, slice(i, i + B // 2))) for i in (0, B // 2)]
  for name in ("mi_representation", "mi_head"):
    expected = np.asarray(whole[name])
    # Reassociation of the E·E-term bilinear scores (~1e-3 here); other draws of
    # the negatives move estimates by 10x that (checked below).
    tol = _tol(np.abs(np.asarray(inputs["z"])).max() ** 2 * E, E * E)
    np.testing.assert_allclose(np.asarray(permuted[name]), expected[perm], atol=tol)
    np.testing.assert_allclose(np.concatenate([np.asarray(h[name]) for h in halves]), expected,
                               atol=tol)
  # The step key and the example ids are what matters.
  other_key = fn(params, inputs, jax.random.PRNGKey(8))
  renamed = fn(params, {**inputs, "example_ids": inputs["example_ids"] + 1})
  for other in (other_key, renamed):
    moved = np.abs(np.asarray(other["mi_representation"]) - whole["mi_representation"]).max()
    assert moved > 10 * tol


_SHARDED_SCRIPT = textwrap.dedent("""
    import json, sys
    sys.path.insert(0, {repo!r})
    import jax, numpy as np
    from jax.sharding import Mesh, NamedSharding, PartitionSpec
    from tests import test_infoprompt as t
    from prompt_tuning.methods.infoprompt import loss
    config = loss.InfoPromptConfig(num_negatives=t.K)
    params, inputs = t._params(config), t._inputs()
    fn = lambda p, i: t._jitted_estimates(config, p, i)
    single = fn(jax.device_put(params, jax.devices()[0]), jax.device_put(inputs, jax.devices()[0]))
    mesh = Mesh(np.asarray(jax.devices()), ("data",))
    shard = {{k: NamedSharding(mesh, PartitionSpec() if k == "prompt" else PartitionSpec("data"))
             for k in inputs}}
    sharded = fn(jax.device_put(params, NamedSharding(mesh, PartitionSpec())),
                 {{k: jax.device_put(v, shard[k]) for k, v in inputs.items()}})
    result = {{"devices": len(jax.devices())}}
    for suffix, out in (("single", single), ("sharded", sharded)):
      result.update({{k + "_" + suffix: np.asarray(v).tolist() for k, v in out.items()}})
    print("RESULT" + json.dumps(result))
""")


def test_eight_devices_sample_what_one_device_does():
  env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8",
         "JAX_PLATFORMS": "cpu"}
  proc = subprocess.run([sys.executable, "-c", _SHARDED_SCRIPT.format(repo=str(REPO))], env=env,
                        capture_output=True, text=True, timeout=300, cwd=REPO)
  assert proc.returncode == 0, proc.stderr[-3000:]
  result = json.loads(proc.stdout.split("RESULT")[-1])
  assert result["devices"] == 8
  tol = _tol(np.abs(np.asarray(_inputs()["z"])).max() ** 2 * E, E * E)
  for name in ("mi_representation", "mi_head"):
    np.testing.assert_allclose(result[name + "_sharded"], result[name + "_single"], atol=tol)


# ----------------------------------------------------------------------------- modules

def test_heads_create_every_parameter_once_with_logical_axes():
  config = loss.InfoPromptConfig(num_negatives=K)
  boxed = loss.make_heads(config).init(jax.random.PRNGKey(0), _features(_inputs()))["params"]
  flat = traverse_util.flatten_dict(boxed, sep="/")
  axes = {k: v.names for k, v in flat.items()}
  assert axes == {
      "head_critic/kernel": ("prompt_embed", "embed"),
      "representation_critic/kernel": ("prompt_embed", "embed"),
      "gaussian/mean/kernel": ("embed", modules.INFO_AXIS),
      "gaussian/mean/bias": (modules.INFO_AXIS,),
      "gaussian/scale/kernel": ("embed", modules.INFO_AXIS),
      "gaussian/scale/bias": (modules.INFO_AXIS,),
  }
  assert all(v.value.shape[-1] == E for v in flat.values())
  # The estimates only read parameters: they run on exactly this tree.
  params = nn.meta.unbox(boxed)
  out = _estimates(config, params, _inputs())
  assert set(out) == {"mi_representation", "mi_head"}
  dot = loss.make_heads(loss.InfoPromptConfig(critic="dot")).init(
      jax.random.PRNGKey(0), _features(_inputs()))["params"]
  assert set(traverse_util.flatten_dict(dot, sep="/")) == {
      k for k in flat if k.startswith("gaussian/")}


def test_heads_attach_to_a_parent_as_info_and_are_replicated():
  class Parent(nn.Module):  # stands in for T5: calls `info` once during init

    def setup(self):
      self.info = loss.make_heads(loss.InfoPromptConfig())

    def __call__(self, features):
      if self.is_initializing():
        self.info(features)
      return features["input_embeddings"]

  boxed = Parent().init(jax.random.PRNGKey(0), _features(_inputs()))["params"]
  assert set(boxed) == {"info"}
  partitioner = partitioning.Partitioner(partitioning.make_mesh(devices=jax.devices()[:1]))
  for sharding in jax.tree_util.tree_leaves(partitioner.shardings_of(boxed)):
    assert all(axis is None for axis in sharding.spec)


def test_dot_critic_is_the_bilinear_critic_with_identity_kernel():
  config = loss.InfoPromptConfig(num_negatives=K)
  params, inputs = _params(config), _inputs()
  eye = jnp.eye(E)
  params = {**params, "head_critic": {"kernel": eye}, "representation_critic": {"kernel": eye}}
  bilinear = _estimates(config, params, inputs)
  dot_config = loss.InfoPromptConfig(num_negatives=K, critic="dot")
  dot = _estimates(dot_config, {"gaussian": params["gaussian"]}, inputs)
  for name in bilinear:
    np.testing.assert_allclose(dot[name], bilinear[name], atol=_tol(100.0, E * E))


def test_estimates_match_a_direct_computation():
  config = loss.InfoPromptConfig(num_negatives=K)
  params, inputs = _params(config), _inputs()
  key = jax.random.PRNGKey(7)
  out = _estimates(config, params, inputs, key)
  keys = sampling.example_keys(key, inputs["example_ids"])
  q = np.asarray(inputs["prompt"], np.float64).mean(0)
  # Head: positive θ, negatives = sampled input embeddings.
  w1 = np.asarray(params["head_critic"]["kernel"], np.float64)
  positions, _ = sampling.sample_context_positions(keys, inputs["input_valid"], K - 1)
  emb = np.asarray(inputs["input_embeddings"], np.float64)
  context = np.take_along_axis(emb, np.asarray(positions)[..., None], axis=1)
  pos = np.asarray(inputs["theta"], np.float64) @ w1.T @ q
  neg = context @ w1.T @ q
  expected = np.log(K) + pos - np.logaddexp.reduce(np.concatenate([pos[:, None], neg], 1), axis=1)
  np.testing.assert_allclose(out["mi_head"], expected, atol=_tol(np.abs(neg).max() + 10, 4 * E * E))
  # Representation (Eq. 9): positive μ(Z) + σ(Z) ⊙ ε_0, negatives μ(Z') + σ(Z') ⊙ ε_j.
  w2 = np.asarray(params["representation_critic"]["kernel"], np.float64)
  gaussian = params["gaussian"]

  def sample(x, eps):
    mu = x @ np.asarray(gaussian["mean"]["kernel"]) + np.asarray(gaussian["mean"]["bias"])
    sigma = np.logaddexp(0, x @ np.asarray(gaussian["scale"]["kernel"])
                         + np.asarray(gaussian["scale"]["bias"]))
    return mu[:, None] + sigma[:, None] * eps

  noise = np.asarray(sampling.gaussian_noise(keys, K, E), np.float64)
  pos = sample(np.asarray(inputs["z"], np.float64), noise[:, :1])[:, 0] @ w2.T @ q
  neg = sample(np.asarray(inputs["z_prime"], np.float64), noise[:, 1:]) @ w2.T @ q
  expected = np.log(K) + pos - np.logaddexp.reduce(np.concatenate([pos[:, None], neg], 1), axis=1)
  np.testing.assert_allclose(out["mi_representation"], expected,
                             atol=_tol(np.abs(neg).max() + 10, 4 * E * E))
  # With 'all', every valid input token is a negative: bound log(1 + tokens).
  everything = _estimates(loss.InfoPromptConfig(num_negatives=K, context_negatives="all"),
                          params, inputs, key)["mi_head"]
  assert np.all(np.asarray(everything)
                <= np.log1p(np.asarray(inputs["input_valid"]).sum(1)).astype(np.float32))


def test_per_token_pooling_averages_per_token_estimates():
  inputs = _inputs()
  config = loss.InfoPromptConfig(num_negatives=K, prompt_pooling="per_token")
  params = _params(config)
  per_token = _estimates(config, params, inputs)
  singles = [_estimates(config, params, {**inputs, "prompt": inputs["prompt"][i:i + 1]})
             for i in range(P)]
  for name in per_token:
    np.testing.assert_allclose(per_token[name], np.mean([s[name] for s in singles], axis=0),
                               atol=_tol(100.0, E * E))
  # One prompt token: both poolings agree. A per-example prompt [B, P, E] works too.
  mean_config = loss.InfoPromptConfig(num_negatives=K)
  one = {**inputs, "prompt": inputs["prompt"][:1]}
  np.testing.assert_allclose(_estimates(mean_config, params, one)["mi_head"],
                             singles[0]["mi_head"], atol=_tol(100.0, E * E))
  batched = {**inputs, "prompt": jnp.broadcast_to(inputs["prompt"], (B, P, E))}
  np.testing.assert_allclose(_estimates(config, params, batched)["mi_head"], per_token["mi_head"],
                             atol=_tol(100.0, E * E))


def test_gradients_reach_prompt_and_every_head_parameter_but_not_z_prime():
  config = loss.InfoPromptConfig(num_negatives=K)
  params, inputs = _params(config), _inputs()

  def objective(prompt, params, z, z_prime):
    out = loss.mutual_information(config, params, key=jax.random.PRNGKey(7),
                                  **{**inputs, "prompt": prompt, "z": z, "z_prime": z_prime})
    return jnp.sum(loss.extra_loss(out, config))

  grads = jax.jit(jax.grad(objective, argnums=(0, 1, 2, 3)))(
      inputs["prompt"], params, inputs["z"], inputs["z_prime"])
  g_prompt, g_params, g_z, g_z_prime = grads
  for path, g in traverse_util.flatten_dict({"prompt": g_prompt, "z": g_z, **g_params},
                                            sep="/").items():
    g = np.asarray(g)
    assert np.all(np.isfinite(g)) and np.any(g != 0), path
  np.testing.assert_array_equal(g_z_prime, 0.0)


def test_gaussian_heads_give_reparameterized_samples():
  heads = modules.GaussianHead()
  z_prime = jnp.asarray(np.random.default_rng(5).standard_normal((B, E)), jnp.float32)
  variables = nn.meta.unbox(heads.init(jax.random.PRNGKey(0), z_prime))
  mean, scale = heads.apply(variables, z_prime)
  # f_μ starts as the identity.
  np.testing.assert_allclose(mean, z_prime, atol=_tol(np.abs(z_prime).max(), E))
  assert np.all(np.asarray(scale) > 0)
  noise = jax.random.normal(jax.random.PRNGKey(1), (B, 4, E))
  samples = heads.apply(variables, z_prime, noise, method=modules.GaussianHead.sample)
  np.testing.assert_allclose(samples, mean[:, None] + scale[:, None] * noise, rtol=1e-6)

  def objective(v):
    return jnp.sum(heads.apply(v, z_prime, noise, method=modules.GaussianHead.sample) ** 2)

  grads = jax.grad(objective)(variables)
  for path, g in traverse_util.flatten_dict(grads, sep="/").items():
    assert np.any(np.asarray(g) != 0), path


def test_training_the_head_critic_raises_its_estimate_toward_log_k():
  config = loss.InfoPromptConfig(num_negatives=K, beta=0.0)
  params, inputs = _params(config), _inputs()
  # LM-head columns and input embeddings differ systematically (here: a shared
  # offset of the label vectors), which a linear critic can learn to see.
  inputs["theta"] = inputs["theta"].at[:, 0].add(3.0)
  trainable = {"prompt": inputs["prompt"], "params": params}
  optimizer = optax.adam(0.05)

  def objective(t, key):
    out = loss.mutual_information(config, t["params"], key=key,
                                  **{**inputs, "prompt": t["prompt"], "z_prime": None})
    return jnp.mean(loss.extra_loss(out, config)), out["mi_head"]

  @jax.jit
  def step(t, state, i):
    (_, mi), grads = jax.value_and_grad(objective, has_aux=True)(t, jax.random.PRNGKey(i))
    updates, state = optimizer.update(grads, state)
    return optax.apply_updates(t, updates), state, mi

  state = optimizer.init(trainable)
  first = None
  for i in range(150):
    trainable, state, mi = step(trainable, state, i)
    first = mi if first is None else first
  # Labels and context tokens become separable, so the estimate climbs toward log K.
  assert float(jnp.mean(mi)) > float(jnp.mean(first)) + 0.5
  assert float(jnp.mean(mi)) > np.log(K) - 0.3


# ----------------------------------------------------------------------------- representations

def test_representations_pick_the_documented_vectors():
  inputs = _inputs()
  features = _features(inputs)
  z = representations.select_representation("decoder_first", features["decoder_hidden"])
  np.testing.assert_array_equal(z, inputs["z"])
  mean = representations.select_representation("encoder_mean", None, features["encoded"],
                                               features["encoder_valid"])
  valid = np.asarray(features["encoder_valid"])
  expected = np.stack([np.asarray(features["encoded"])[b][valid[b]].mean(0) for b in range(B)])
  np.testing.assert_allclose(mean, expected, atol=_tol(4.0, L + P))
  np.testing.assert_array_equal(representations.masked_mean(jnp.ones((1, 3, 2)),
                                                            jnp.zeros((1, 3), bool)), 0.0)


def test_label_vectors_are_lm_head_columns():
  kernel = jnp.asarray(np.random.default_rng(6).standard_normal((E, 20)), jnp.float32)
  targets = jnp.asarray([[5, 7, 1, 0], [9, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 0]], jnp.int32)
  first = representations.label_vectors(kernel, targets, "first")
  np.testing.assert_array_equal(first, np.asarray(kernel)[:, [5, 9, 1, 0]].T)
  mean = representations.label_vectors(kernel, targets, "mean")
  k = np.asarray(kernel)
  np.testing.assert_allclose(mean[0], (k[:, 5] + k[:, 7]) / 2, atol=_tol(4.0, 2))
  np.testing.assert_array_equal(mean[1:], first[1:])  # one piece, or none besides EOS/padding
  classes = representations.label_vectors(kernel, jnp.asarray([[5, 7], [9, 0]]), "mean")
  np.testing.assert_allclose(classes, mean[:2], atol=_tol(4.0, 2))


# ----------------------------------------------------------------------------- generator

def test_prompt_generator_is_a_low_rank_map_per_token():
  generator = modules.PromptGenerator(length=P, rank=2)
  pooled = jnp.asarray(np.random.default_rng(7).standard_normal((B, E)), jnp.float32)
  boxed = generator.init(jax.random.PRNGKey(0), pooled)["params"]
  assert boxed["down"].names == ("prompt", "prompt_embed", modules.RANK_AXIS)
  assert boxed["up"].names == ("prompt", modules.RANK_AXIS, "prompt_embed")
  params = nn.meta.unbox(boxed)
  prompts = np.asarray(generator.apply({"params": params}, pooled))
  assert prompts.shape == (B, P, E)
  down, up = np.asarray(params["down"]), np.asarray(params["up"])
  for i in range(P):
    expected = np.asarray(pooled) @ down[i] @ up[i]
    np.testing.assert_allclose(prompts[:, i], expected, atol=_tol(50.0, 2 * E))
    assert np.linalg.matrix_rank(down[i] @ up[i]) == 2
  assert not np.allclose(down[0], down[1])  # each token has its own map
  # The generated prompts feed the estimates directly.
  config = loss.InfoPromptConfig(num_negatives=K)
  out = _estimates(config, _params(config), {**_inputs(), "prompt": jnp.asarray(prompts)})
  assert np.all(np.isfinite(out["mi_head"]))
  with pytest.raises(UserError, match="rank"):
    modules.PromptGenerator(length=P, rank=0).init(jax.random.PRNGKey(0), pooled)


# ----------------------------------------------------------------------------- config

def test_is_active_and_zero_weights_skip_their_terms():
  assert loss.is_active(loss.InfoPromptConfig())
  assert not loss.is_active(loss.InfoPromptConfig(beta=0.0, gamma=0.0))
  assert not loss.is_active(None)
  params, inputs = _params(loss.InfoPromptConfig()), _inputs()
  head_only = loss.InfoPromptConfig(beta=0.0, num_negatives=K)
  out = _estimates(head_only, params, {**inputs, "z_prime": None})
  assert set(out) == {"mi_head"}
  np.testing.assert_allclose(loss.extra_loss(out, head_only), -0.05 * out["mi_head"], rtol=1e-6)
  rep_only = loss.InfoPromptConfig(gamma=0.0, num_negatives=K)
  out = _estimates(rep_only, params, inputs)
  assert set(out) == {"mi_representation"}
  np.testing.assert_allclose(loss.extra_loss(out, rep_only), -0.1 * out["mi_representation"],
                             rtol=1e-6)
  with pytest.raises(ValueError, match="z_prime"):
    _estimates(loss.InfoPromptConfig(num_negatives=K), params, {**inputs, "z_prime": None})


@pytest.mark.parametrize("kwargs, match", [
    ({"critic": "cosine"}, "InfoPromptConfig.critic='cosine'"),
    ({"z_source": "pooled"}, "InfoPromptConfig.z_source"),
    ({"context_negatives": "some"}, "InfoPromptConfig.context_negatives"),
    ({"prompt_pooling": "max"}, "InfoPromptConfig.prompt_pooling"),
    ({"label_pieces": "last"}, "InfoPromptConfig.label_pieces"),
    ({"theta": "label"}, "InfoPromptConfig.theta='label'"),
    ({"num_negatives": 1}, "num_negatives=1"),
    ({"beta": -0.1}, "beta=-0.1"),
])
def test_config_errors_name_the_binding(kwargs, match):
  with pytest.raises(UserError, match=match) as info:
    loss.InfoPromptConfig(**kwargs)
  # gin appends "In call to configurable ..." lines; the CLI prints the first.
  assert match in str(info.value).splitlines()[0]


def test_config_is_gin_configurable():
  gin.parse_config(["InfoPromptConfig.beta = 0.2", "InfoPromptConfig.critic = 'dot'",
                    "PromptGenerator.rank = 16"])
  assert loss.InfoPromptConfig() == loss.InfoPromptConfig(beta=0.2, critic="dot")
  assert modules.PromptGenerator(length=4).rank == 16
