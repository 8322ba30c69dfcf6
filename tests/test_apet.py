"""APET and the PET baselines: plans, counts, identity at init, selection, sharding, training."""
import json
import os
import subprocess
import sys

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from prompt_tuning import configurables
from prompt_tuning.errors import UserError
from prompt_tuning.methods.apet import baselines, selection
from prompt_tuning.methods.apet.counts import count_parameters
from prompt_tuning.methods.apet.ops import LoRA, Add, Prefix
from prompt_tuning.models import decoding
from prompt_tuning.models.config import T5Config, t5_1_1_config
from prompt_tuning.models.deltas import NO_DELTAS, DeltaPlan
from prompt_tuning.models.inference import shift_right
from prompt_tuning.models.t5 import T5, delta_sites

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = T5Config(vocab_size=40, emb_dim=16, num_heads=2, head_dim=4, mlp_dim=24,
                  num_encoder_layers=2, num_decoder_layers=2, relative_attention_num_buckets=8,
                  relative_attention_max_distance=16)
INPUTS = jnp.array([[3, 4, 5, 6, 2, 1], [2, 6, 1, 0, 0, 0]], jnp.int32)
TARGETS = jnp.array([[7, 8, 9, 1], [5, 1, 0, 0]], jnp.int32)

PLANS = {
    "bitfit": baselines.bitfit_deltas,
    "lora": baselines.lora_deltas,
    "adapter": baselines.adapter_deltas,
    "ia3": baselines.ia3_deltas,
    "concat": baselines.concat_deltas,
}


def _flat(tree):
  return flax.traverse_util.flatten_dict(flax.core.unfreeze(tree), sep="/")


def _shapes(model, config=CONFIG):
  tokens = jnp.ones((1, 4), jnp.int32)
  return _flat(nn.meta.unbox(jax.eval_shape(model.init, jax.random.PRNGKey(0), tokens, tokens)
                             )["params"])


def _new_params(plan, config=CONFIG):
  """{path: shape} of what `plan` adds to a plain T5 of `config`."""
  plain = _shapes(T5(config), config)
  return {k: v.shape for k, v in _shapes(T5(config, deltas=plan), config).items()
          if k not in plain}


@pytest.fixture(scope="module")
def backbone():
  """Random backbone parameters, drawn in numpy (non-trivial, so deltas could show)."""
  rng = np.random.default_rng(0)
  return {k: (rng.normal(size=s.shape) / np.sqrt(s.shape[0] if len(s.shape) > 1 else 1))
          .astype(np.float32) for k, s in _shapes(T5(CONFIG)).items()}


def _variables(model, backbone, seed=1):
  """`model`'s parameters: `backbone` plus freshly initialized deltas."""
  tokens = jnp.ones((1, 4), jnp.int32)
  fresh = _flat(nn.meta.unbox(jax.jit(model.init)(jax.random.PRNGKey(seed), tokens, tokens)
                             )["params"])
  return {"params": flax.traverse_util.unflatten_dict({**fresh, **backbone}, sep="/")}


# ---- counts ----

@pytest.mark.parametrize("method", sorted(PLANS))
def test_created_parameters_match_closed_forms(method):
  for config in (CONFIG, CONFIG.replace(mlp_activations=("relu",), num_decoder_layers=3)):
    new = _new_params(PLANS[method](), config)
    assert sum(int(np.prod(s)) for s in new.values()) == count_parameters(method, config)


def test_counts_reproduce_the_papers_table():
  # PET_Scaling's apet_scale.py (the paper's budgets) for T5 1.1 small and base.
  paper = {"small": dict(lora=229_376, adapter=803_584, bitfit=121_216, prompt=51_200),
           "base": dict(lora=589_824, adapter=1_807_488, bitfit=270_208, prompt=76_800)}
  for size, want in paper.items():
    config = t5_1_1_config(size=size)
    for method, n in want.items():
      assert count_parameters(method, config) == n, (size, method)
    for method in ("lora", "bitfit"):
      new = _new_params(PLANS[method](), config)
      assert sum(int(np.prod(s)) for s in new.values()) == want[method]


def test_full_finetune_counts_the_backbone_and_settings_are_checked():
  n = sum(int(np.prod(s.shape)) for s in _shapes(T5(CONFIG)).values())
  assert count_parameters("full_finetune", CONFIG) == n
  assert count_parameters("lora", CONFIG, rank=4, cross_attention=True) == 6 * 2 * 4 * (16 + 8)
  assert count_parameters("apet", CONFIG, budget="lora") == count_parameters("lora", CONFIG)
  with pytest.raises(UserError, match="no settings"):
    count_parameters("lora", CONFIG, bottleneck=3)
  with pytest.raises(UserError, match="unknown PET method"):
    count_parameters("loha", CONFIG)


def test_parameter_names_live_under_the_module_they_modify():
  lora = _new_params(baselines.lora_deltas())
  assert lora["encoder/layers_0/attention/query/lora/a"] == (16, 8)
  assert lora["encoder/layers_0/attention/query/lora/b"] == (8, 8)
  assert "decoder/layers_1/self_attention/value/lora/b" in lora
  assert not any("encoder_decoder_attention" in k or "/key/" in k for k in lora)
  bitfit = _new_params(baselines.bitfit_deltas())
  assert bitfit["encoder/layers_0/attention/out/bias/bias"] == (16,)
  assert bitfit["encoder/layers_1/pre_mlp_layer_norm/bias/bias"] == (16,)
  assert bitfit["decoder/logits_dense/bias/bias"] == (40,)
  adapter = _new_params(baselines.adapter_deltas())
  assert adapter["decoder/layers_0/mlp/adapter/down"] == (16, 24)
  assert adapter["decoder/layers_0/self_attention/adapter/up"] == (24, 16)
  ia3 = _new_params(baselines.ia3_deltas())
  assert ia3["encoder/layers_0/mlp/ia3/scale"] == (24,)
  assert ia3["decoder/layers_0/encoder_decoder_attention/key/ia3/scale"] == (8,)
  prefix = _new_params(baselines.concat_deltas(length=3))
  assert prefix["encoder/layers_0/attention/prefix/key"] == (3, 2, 4)
  assert prefix["encoder/layers_0/attention/prefix/gate"] == (2,)


def test_the_empty_plan_is_the_plain_model():
  assert set(_shapes(T5(CONFIG, deltas=NO_DELTAS))) == set(_shapes(T5(CONFIG)))
  assert not NO_DELTAS and not DeltaPlan()
  tokens = jnp.ones((1, 4), jnp.int32)
  plain = jax.make_jaxpr(lambda v: T5(CONFIG).apply(v, tokens, tokens))
  variables = {"params": flax.traverse_util.unflatten_dict(
      {k: jnp.zeros(s.shape) for k, s in _shapes(T5(CONFIG)).items()}, sep="/")}
  assert str(plain(variables)) == str(jax.make_jaxpr(
      lambda v: T5(CONFIG, deltas=NO_DELTAS).apply(v, tokens, tokens))(variables))


# ---- identity at init ----

@pytest.mark.slow
@pytest.mark.parametrize("method", sorted(PLANS) + ["apet", "all"])
def test_every_method_is_the_identity_at_init(method, backbone):
  if method == "apet":
    plan = selection.select(700, CONFIG, seed=3).plan()
  elif method == "all":
    plan = DeltaPlan(sum((PLANS[m]().rules for m in sorted(PLANS)), ()))
  else:
    plan = PLANS[method]()
  frozen = T5(CONFIG).apply({"params": flax.traverse_util.unflatten_dict(backbone, sep="/")},
                            INPUTS, shift_right(TARGETS))
  model = T5(CONFIG, deltas=plan)
  tuned = model.apply(_variables(model, backbone), INPUTS, shift_right(TARGETS))
  np.testing.assert_array_equal(np.asarray(tuned), np.asarray(frozen))


def test_ungated_prefix_is_a_plain_joint_softmax():
  """`gated=False` is prefix-tuning's join: equal to attention over [prefix; keys]."""
  from prompt_tuning.models.layers import MultiHeadAttention
  plan = DeltaPlan(((r"attention", Prefix(length=3, gated=False)),))
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 5, 16))
  bias = jnp.zeros((1, 2, 5, 5))


  class Layer(nn.Module):
    @nn.compact
    def __call__(self, x):
      return MultiHeadAttention(2, 4, deltas=plan, name="attention")(x, x, bias)

  variables = Layer().init(jax.random.PRNGKey(1), x)
  got = Layer().apply(variables, x)
  p = nn.meta.unbox(variables)["params"]["attention"]
  q, k, v = ((x @ p[name]["kernel"]).reshape(2, 5, 2, 4) for name in ("query", "key", "value"))
  keys = jnp.concatenate([jnp.broadcast_to(p["prefix"]["key"], (2, 3, 2, 4)), k], axis=1)
  values = jnp.concatenate([jnp.broadcast_to(p["prefix"]["value"], (2, 3, 2, 4)), v], axis=1)
  weights = jax.nn.softmax(jnp.einsum("bqhd,bkhd->bhqk", q, keys), axis=-1)
  want = jnp.einsum("bhqk,bkhd->bqhd", weights, values).reshape(2, 5, 8) @ p["out"]["kernel"]
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


# ---- decoding ----

@pytest.mark.slow
def test_kv_cache_decoding_with_deltas_matches_full_recompute(backbone):
  plan = (baselines.lora_deltas(cross_attention=True)
          + baselines.concat_deltas(length=2) + baselines.ia3_deltas())
  model = T5(CONFIG, deltas=plan)
  variables = _variables(model, backbone)
  # Move every delta away from its identity init so each one shows in the logits.
  rng = np.random.default_rng(5)
  variables = {"params": jax.tree_util.tree_map(
      lambda x: x + 0.3 * rng.normal(size=x.shape).astype(np.float32), variables["params"])}
  tokens, _ = jax.jit(lambda v: decoding.generate(model, v, INPUTS, max_decode_length=6))(
      variables)
  logits = model.apply(variables, INPUTS, shift_right(tokens))
  greedy = np.asarray(jnp.argmax(logits, -1))
  tokens = np.asarray(tokens)
  for row in range(tokens.shape[0]):
    n = decoding.sequence_lengths(tokens[row])
    np.testing.assert_array_equal(tokens[row, :n], greedy[row, :n])
  # And the cache's step logits equal teacher forcing on the same prefix.
  step_fn, cache = decoding.t5_step_fn(model, variables, INPUTS, max_decode_length=6)
  step_fn = jax.jit(step_fn)
  decoder_inputs = shift_right(tokens)
  for t in range(3):
    step_logits, cache = step_fn(decoder_inputs[:, t], cache)
    np.testing.assert_allclose(step_logits, logits[:, t], rtol=2e-5, atol=2e-5)


# ---- plans ----

def test_plan_errors_are_one_line_user_errors():
  tokens = jnp.ones((1, 4), jnp.int32)
  bad = [DeltaPlan(((r"encoder/layers_0/atention/query", LoRA()),)),
         DeltaPlan(((r"encoder/layers_0/mlp", LoRA()),)),  # LoRA needs a dense layer
         DeltaPlan(((r".*/query", Add()), (r"encoder/.*/query", Add()))),
         DeltaPlan(((r"encoder/layers_0/mlp/wo", Add(positions=(3, 99))),))]
  for plan in bad:
    with pytest.raises(UserError) as e:
      T5(CONFIG, deltas=plan).init(jax.random.PRNGKey(0), tokens, tokens)
    assert "\n" not in str(e.value)
  with pytest.raises(UserError, match="rank"):
    baselines.lora_deltas(rank=0)
  with pytest.raises(UserError, match="targets"):
    baselines.lora_deltas(targets=("q",))


def test_delta_sites_list_every_hostable_module():
  sites = delta_sites(CONFIG)
  plain = {k.rsplit("/", 1)[0] for k in _shapes(T5(CONFIG))}
  dense_and_norms = {p for p, i in sites.items() if i.kind in ("dense", "norm")}
  assert dense_and_norms == plain - {"token_embedder", "encoder/relpos_bias",
                                     "decoder/relpos_bias"}
  assert sites["decoder/layers_1/encoder_decoder_attention"].kind == "attention"
  assert sites["encoder/layers_0/mlp"].hidden == 24


# ---- APET selection ----

def test_selection_is_exact_deterministic_and_seed_dependent():
  cap = selection.capacity(CONFIG)
  for budget in (1, 7, 100, 1_000, 5_000, cap // 2, cap):
    a = selection.select(budget, CONFIG, seed=0)
    assert a.num_parameters() == budget
    new = _new_params(a.plan())
    assert sum(int(np.prod(s)) for s in new.values()) == budget, budget
    assert a.to_json() == selection.select(budget, CONFIG, seed=0).to_json()
  a, b = selection.select(3_000, CONFIG, seed=0), selection.select(3_000, CONFIG, seed=1)
  assert a.entries != b.entries
  ops = a.counts_by_operation()
  assert sum(ops.values()) == 3_000 and min(ops.values()) > 0, ops
  assert set(_new_params(a.plan())) != set(_new_params(b.plan()))


def test_selection_round_trips_through_json(tmp_path):
  a = selection.select(2_345, CONFIG, seed=4)
  assert any(getattr(ins, "positions", None) for _, _, ins in a.entries)  # a partial ADD
  b = selection.Selection.from_json(a.to_json(), CONFIG)
  assert b == a and b.plan() == a.plan()
  path = tmp_path / "apet_selection.json"
  path.write_text(a.to_json())
  assert selection.apet_deltas(CONFIG, selection_file=str(path)) == a.plan()
  assert selection.apet_deltas(CONFIG, budget=2_345, selection_file=str(path)) == a.plan()
  assert dict(a.plan().records) == {"apet_selection.json": a.to_json()}
  with pytest.raises(UserError, match="holds budget 2,345, not APET_BUDGET=1"):
    selection.apet_deltas(CONFIG, budget=1, selection_file=str(path))
  assert json.loads(a.to_json())["budget"] == 2_345
  with pytest.raises(UserError, match="another model config"):
    selection.Selection.from_json(a.to_json(), CONFIG.replace(mlp_dim=32))
  with pytest.raises(UserError, match="does not exist"):
    selection.apet_deltas(CONFIG, budget=1, selection_file=str(tmp_path / "missing.json"))


@pytest.mark.parametrize("budget", [0, -5, 2.5, "7", None, "capacity+1"])
def test_bad_budgets_are_one_line_errors(budget):
  if budget == "capacity+1":
    budget = selection.capacity(CONFIG) + 1
  with pytest.raises(UserError) as e:
    selection.select(budget, CONFIG, seed=0)
  assert "\n" not in str(e.value) and "budget" in str(e.value).lower()


def test_budget_by_method_name_matches_that_method():
  plan = selection.apet_deltas(CONFIG, budget="lora", seed=2)
  assert sum(int(np.prod(s)) for s in _new_params(plan).values()) == count_parameters(
      "lora", CONFIG)
  with pytest.raises(UserError, match="unknown PET method"):
    selection.apet_deltas(CONFIG, budget="lorra")


# ---- gin ----

@pytest.mark.parametrize("method", ["bitfit", "lora", "adapter", "ia3", "apet", "full_finetune"])
def test_method_gin_files_bind_deltas_and_patterns(method):
  from prompt_tuning.train import initialize
  from prompt_tuning.train.trainable import split_variables, trainable_patterns
  extra = ["APET_BUDGET = 'bitfit'"] if method == "apet" else []
  configurables.parse(["models/t5_1_1_toy_prompt.gin", "runs/prompt_finetune.gin",
                   f"methods/{method}.gin"],
                  ["MODEL_DIR = '/unused'", "MIXTURE_OR_TASK_NAME = 'x'",
                   "INITIAL_CHECKPOINT_PATH = None", "build_model.prompt = None", *extra])
  patterns = trainable_patterns()
  assert patterns == baselines.method_patterns(method)
  model = initialize.build_model()
  tokens = jnp.ones((1, 4), jnp.int32)
  variables = nn.meta.unbox(jax.eval_shape(model.init, jax.random.PRNGKey(0), tokens, tokens))
  trainable, frozen = split_variables(variables, patterns)
  n = sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(trainable))
  budget = {"apet": "bitfit"}.get(method)
  want = count_parameters(method, model.config, **({"budget": budget} if budget else {}))
  assert n == want
  if method != "full_finetune":
    assert set(_flat(frozen["params"])) == set(_shapes(T5(model.config), model.config))


# ---- sharding (8 fake devices) ----

_SHARDING_SCRIPT = r"""
import json, sys
sys.path.insert(0, {repo!r})
import jax
from prompt_tuning.methods.apet import baselines
from prompt_tuning.methods.apet.ops import Adapter, Prefix, Scale
from prompt_tuning.models.config import T5Config
from prompt_tuning.models.deltas import DeltaPlan
from prompt_tuning.models.t5 import T5
from prompt_tuning.train.initialize import variable_shardings
from prompt_tuning.train.partitioning import Partitioner, make_mesh
import flax
config = T5Config(vocab_size=64, emb_dim=16, num_heads=4, head_dim=4, mlp_dim=32,
                  num_encoder_layers=1, num_decoder_layers=1,
                  relative_attention_num_buckets=8, relative_attention_max_distance=16)
plan = (baselines.lora_deltas() + baselines.adapter_deltas()
        + DeltaPlan(((r"encoder/layers_0/attention/query", Adapter(bottleneck=8)),
                     (r"encoder/layers_0/attention/key", Scale()),
                     (r"encoder/layers_0/attention", Prefix(length=2)))))
partitioner = Partitioner(make_mesh(mesh_shape=(2, 4)))
_, shardings = variable_shardings(T5(config, deltas=plan), partitioner)
flat = flax.traverse_util.flatten_dict(shardings["params"], sep="/")
print("RESULT" + json.dumps({{k: [a if a is None or isinstance(a, str) else list(a)
                                  for a in v.spec] for k, v in flat.items()}}))
"""


def test_delta_parameters_shard_like_the_modules_they_modify():
  env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8",
         "JAX_PLATFORMS": "cpu"}
  proc = subprocess.run([sys.executable, "-c", _SHARDING_SCRIPT.format(repo=REPO)], env=env,
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  specs = {k: tuple(v) for k, v in json.loads(proc.stdout.split("RESULT")[-1]).items()}
  spec = specs.__getitem__
  layer = "encoder/layers_0/attention"
  # The query kernel is (embed, joined_kv) -> (None, 'model'): LoRA's B follows its out-axis.
  assert spec(f"{layer}/query/kernel") == (None, "model")
  assert spec(f"{layer}/query/lora/a") == (None, None)
  assert spec(f"{layer}/query/lora/b") == (None, "model")
  assert spec("decoder/layers_0/self_attention/value/lora/b") == (None, "model")
  # Adapters on d_model-wide outputs are replicated, as d_model (embed) is.
  for name in ("down", "up", "down_bias", "up_bias"):
    assert set(spec(f"{layer}/adapter/{name}")) <= {None}, name
    assert set(spec(f"encoder/layers_0/mlp/adapter/{name}")) <= {None}, name
  # On a joined_kv-wide output the adapter shards like the kernel's out-axis.
  assert spec(f"{layer}/query/adapter/down") == ("model", None)
  assert spec(f"{layer}/query/adapter/up") == (None, "model")
  assert spec(f"{layer}/key/ia3/scale") == ("model",)
  assert spec(f"{layer}/prefix/key") == (None, "model", None)
  assert spec(f"{layer}/prefix/gate") == ("model",)


# ---- training ----

@pytest.mark.slow
def test_lora_training_changes_only_lora_parameters(tmp_path):
  from prompt_tuning.io.backbone import load_backbone, save_backbone
  from prompt_tuning.train import initialize
  from tests.train_helpers import TOY_BINDINGS, toy_train
  files = ("models/t5_1_1_toy_prompt.gin", "runs/prompt_finetune.gin", "methods/lora.gin")
  bindings = ["build_model.prompt = None", "adamw.learning_rate = 1e-2"]
  configurables.parse(list(files), [*TOY_BINDINGS, "MODEL_DIR = '/unused'", *bindings])
  config = initialize.build_model().config
  tokens = np.ones((1, 4), np.int32)
  initial = nn.meta.unbox(T5(config).init(jax.random.PRNGKey(7), tokens, tokens))["params"]
  save_backbone(str(tmp_path / "backbone"), config, initial)

  summary = toy_train(tmp_path / "run", steps=6, files=files, extra=[
      *bindings, f"INITIAL_CHECKPOINT_PATH = '{tmp_path / 'backbone'}'",
      "train.return_variables = True"])
  trainable = _flat(summary["trainable"])
  assert trainable and all("/lora/" in k for k in trainable)
  assert summary["trainable_parameters"] == count_parameters("lora", config)
  # Every LoRA B moved off zero; the backbone is bit-identical to the checkpoint.
  assert all(np.abs(np.asarray(v)).max() > 0 for k, v in trainable.items() if k.endswith("/b"))
  _, saved = load_backbone(str(tmp_path / "backbone"))
  frozen, want = _flat(summary["frozen"]["params"]), _flat(saved)
  assert set(frozen) == set(want)
  for k, v in want.items():
    np.testing.assert_array_equal(np.asarray(frozen[k]), np.asarray(v), err_msg=k)
  manifest = (tmp_path / "run" / "checkpoints" / "6" / "state" / "_METADATA").read_text()
  assert "lora" in manifest and "kernel" not in manifest


def test_rematerialized_layers_take_the_same_deltas(backbone):
  plan = baselines.lora_deltas() + baselines.adapter_deltas()
  model, remat = T5(CONFIG, deltas=plan), T5(CONFIG.replace(remat=True), deltas=plan)
  variables = _variables(model, backbone)
  variables = {"params": jax.tree_util.tree_map(lambda x: x + 0.1, variables["params"])}
  assert set(_flat(variables["params"])) == set(_shapes(remat))
  logits = lambda m: jax.jit(m.apply)(variables, INPUTS, shift_right(TARGETS))  # noqa: E731
  np.testing.assert_allclose(logits(remat), logits(model), rtol=1e-5, atol=1e-5)
