"""The shared run setup: backbone vs new variables, named method slots, optimizer layouts."""
import functools

import flax
import flax.linen as nn
import gin
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import PartitionSpec as P

from prompt_tuning import configurables
from prompt_tuning.errors import UserError
from prompt_tuning.io.backbone import save_backbone
from prompt_tuning.methods.residual import ResidualReparameterization
from prompt_tuning.methods.xprompt import masks as xprompt
from prompt_tuning.models.config import T5Config
from prompt_tuning.models.t5 import T5
from prompt_tuning.prompts.prompt import Prompt
from prompt_tuning.train import optim
from prompt_tuning.train import initialize
from prompt_tuning.train.initialize import backbone_paths
from prompt_tuning.train.run_setup import build_run, optimizer_layouts

CONFIG = T5Config(vocab_size=32, emb_dim=8, num_heads=2, head_dim=4, mlp_dim=16,
                  num_encoder_layers=1, num_decoder_layers=1, relative_attention_num_buckets=4,
                  relative_attention_max_distance=8)


class Critic(nn.Module):
  """A stand-in for a method's own parameters (e.g. InfoPrompt's critics)."""

  @nn.compact
  def __call__(self, features):
    width = features["decoder_hidden"].shape[-1]
    return self.param("w", nn.initializers.ones, (width, 3))


def _flat(tree):
  return flax.traverse_util.flatten_dict(flax.core.unfreeze(tree), sep="/")


@pytest.fixture(scope="module")
def backbone_dir(tmp_path_factory):
  path = tmp_path_factory.mktemp("backbone") / "b"
  ctx = build_run(model=T5(CONFIG), seed=3)
  save_backbone(str(path), CONFIG, jax.device_get(ctx.variables["params"]))
  return str(path), jax.device_get(ctx.variables["params"])


def test_backbone_is_exactly_the_plain_model(backbone_dir):
  path, saved = backbone_dir
  assert backbone_paths(CONFIG) == frozenset(_flat(saved))
  model = T5(CONFIG, prompt=Prompt(length=2), extras=(("critic", Critic),))
  ctx = build_run(model=model, initial_checkpoint_path=path)
  params = _flat(ctx.variables["params"])
  # New parameters are created by the model's own initializers ...
  assert set(params) - backbone_paths(CONFIG) == {"prompt/prompt", "critic/w"}
  np.testing.assert_array_equal(params["critic/w"], np.ones((CONFIG.emb_dim, 3)))
  # ... and the backbone is the checkpoint's, untouched.
  for key, value in _flat(saved).items():
    np.testing.assert_array_equal(params[key], value, err_msg=key)
  # New parameters are trainable by pattern like the prompt.
  split = ctx.split(("prompt/.*", "critic/.*"))
  assert set(_flat(split.trainable)) == {"prompt/prompt", "critic/w"}


@pytest.mark.slow
@pytest.mark.parametrize("dtype", [None, "bfloat16"])
def test_random_backbone_built_in_pieces_is_the_whole_init(dtype):
  """Group by group (less transient memory), the values are exactly `model.init`'s."""
  model = T5(CONFIG, prompt=Prompt(length=2))
  rng = jax.random.PRNGKey(7)
  enc = dec = jnp.ones((1, 4), jnp.int32)
  whole = {k: v for k, v in _flat(nn.meta.unbox(model.init(rng, enc, dec))["params"]).items()
           if k in backbone_paths(CONFIG)}
  target = jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype),
                                  initialize.backbone_shapes(CONFIG))
  built = 0
  real_jit = jax.jit

  def counting_jit(*args, **kwargs):
    nonlocal built
    built += 1
    return real_jit(*args, **kwargs)

  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(initialize.jax, "jit", counting_jit)
    pieces = _flat(initialize.random_backbone(model, target, rng, dtype, pieces=4,
                                              min_group_bytes=0))
    assert 4 <= built < len(whole)  # several groups, not one program per parameter
    built = 0
    # A backbone this small (far below MIN_GROUP_BYTES) is one group: one compile.
    initialize.random_backbone(model, target, rng, dtype, pieces=4)
    assert built == 1
  assert set(pieces) == set(whole)
  for key, value in whole.items():
    expected = np.asarray(value.astype(dtype) if dtype else value)
    assert pieces[key].dtype == expected.dtype
    np.testing.assert_array_equal(np.asarray(pieces[key]), expected, err_msg=key)


def test_a_checkpoint_must_hold_every_backbone_path(backbone_dir, tmp_path):
  _, saved = backbone_dir
  partial = dict(saved)
  partial["decoder"] = {k: v for k, v in saved["decoder"].items() if k != "logits_dense"}
  save_backbone(str(tmp_path / "partial"), CONFIG, partial)
  with pytest.raises(UserError, match=r"missing \['decoder/logits_dense/kernel'\]"):
    build_run(model=T5(CONFIG, prompt=Prompt(length=2)),
              initial_checkpoint_path=str(tmp_path / "partial"))


def test_stacked_method_files_combine_in_named_slots():
  configurables.parse(["models/t5_1_1_toy_prompt.gin", "methods/xprompt.gin", "methods/residual.gin"],
                  ["RESIDUAL_BOTTLENECK = 4", "XPROMPT_PIECES = 4"])
  try:
    prompt = gin.get_configurable(Prompt)()
  finally:
    gin.clear_config()
  assert [name for name, _ in prompt.reparameterizations] == ["residual", "xprompt"]
  model = T5(CONFIG, prompt=prompt)
  tokens = jnp.ones((1, 4), jnp.int32)
  variables = nn.meta.unbox(model.init(jax.random.PRNGKey(0), tokens, tokens))
  assert {"prompt/prompt", "prompt/residual/down/kernel"} <= set(_flat(variables["params"]))
  token_mask, piece_mask = xprompt.get_masks(variables[xprompt.MASK_COLLECTION])
  assert token_mask.shape == (prompt.length,) and piece_mask.shape == (prompt.length, 4)
  assert "prompt/xprompt/token_mask" in _flat(variables[xprompt.MASK_COLLECTION])


def test_optimizer_layouts_follow_the_tree_not_the_shapes():
  # Two parameters of one shape with different layouts (as LoRA's A and B can be).
  trainable = {"a": jax.ShapeDtypeStruct((4, 4), jnp.float32),
               "b": jax.ShapeDtypeStruct((4, 4), jnp.float32)}
  layouts = {"a": P("model", None), "b": P(None, "model")}
  adam = optax.adam(1e-3)
  state_layouts = optimizer_layouts(adam, trainable, layouts, P())
  for moments in (state_layouts[0].mu, state_layouts[0].nu):
    assert moments == layouts
  # Adafactor's factored row/column statistics are replicated; counters too.
  big = {"w": jax.ShapeDtypeStruct((256, 512), jnp.float32)}
  factored = optimizer_layouts(optim.adafactor(), big, {"w": P(None, "model")}, P())
  leaves = jax.tree_util.tree_leaves(factored, is_leaf=lambda x: isinstance(x, P))
  assert leaves and all(leaf == P() for leaf in leaves)
  full = optimizer_layouts(optax.adafactor(factored=False), big, {"w": P(None, "model")}, P())
  assert P(None, "model") in jax.tree_util.tree_leaves(full, is_leaf=lambda x: isinstance(x, P))


def test_reparameterization_names_must_be_distinct():
  twice = (("residual", functools.partial(ResidualReparameterization, bottleneck=2)),) * 2
  model = T5(CONFIG, prompt=Prompt(length=2, reparameterizations=twice))
  tokens = jnp.ones((1, 4), jnp.int32)
  with pytest.raises(ValueError, match="must be distinct"):
    model.init(jax.random.PRNGKey(0), tokens, tokens)
