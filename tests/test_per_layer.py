"""Per-layer prompts: add-mode zero deltas are the plain model; only prompts train; gin."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from prompt_tuning.errors import UserError
from prompt_tuning.models.config import T5Config
from prompt_tuning.models.t5 import T5
from prompt_tuning.prompts.per_layer import PerLayerPrompt
from prompt_tuning.prompts.prompt import Prompt
from prompt_tuning.train.trainable import merge_variables, split_variables

CONFIG = T5Config(vocab_size=40, emb_dim=8, num_heads=2, head_dim=4, mlp_dim=16,
                  num_encoder_layers=3, num_decoder_layers=1, relative_attention_num_buckets=8,
                  relative_attention_max_distance=16)
TOKENS, DECODER = np.array([[3, 5, 6, 1, 0], [7, 1, 0, 0, 0]]), np.array([[0, 3, 4], [0, 2, 1]])


def init(model):
  return nn.meta.unbox(jax.jit(model.init)(jax.random.PRNGKey(0), TOKENS, DECODER))


def test_add_mode_with_zero_deltas_is_the_plain_prompt_model():
  model = T5(CONFIG, prompt=PerLayerPrompt(prompt=Prompt(length=2), mode="add"))
  variables = init(model)
  prompts = variables["params"]["prompt"]
  assert sorted(prompts) == ["layers_1", "layers_2", "prompt"]
  plain = T5(CONFIG, prompt=Prompt(length=2))
  plain_variables = {"params": {**variables["params"], "prompt": prompts["prompt"]}}
  np.testing.assert_allclose(jax.jit(model.apply)(variables, TOKENS, DECODER),
                             jax.jit(plain.apply)(plain_variables, TOKENS, DECODER),
                             rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("mode", ["replace", "add"])
def test_the_trainable_split_is_every_layer_prompt_and_each_gets_gradients(mode):
  model = T5(CONFIG, prompt=PerLayerPrompt(prompt=Prompt(length=2), mode=mode))
  variables = init(model)
  trainable, frozen = split_variables(variables, ["prompt/.*"])
  keys = jax.random.split(jax.random.PRNGKey(3), 3)
  # Nonzero layer prompts, so an add-mode layer 2 sees layer 1's delta too.
  trainable = jax.tree_util.tree_map(lambda x: x + 0.1 * jax.random.normal(keys[0], x.shape),
                                     trainable)

  def loss(trainable):
    return jnp.sum(model.apply(merge_variables(trainable, frozen), TOKENS, DECODER) ** 2)
  grads = jax.jit(jax.grad(loss))(trainable)
  flat = {"/".join(str(getattr(k, "key", k)) for k in path): g
          for path, g in jax.tree_util.tree_leaves_with_path(grads)}
  assert sorted(flat) == ["prompt/layers_1", "prompt/layers_2", "prompt/prompt/prompt"]
  for name, g in flat.items():
    assert np.abs(g).sum() > 0, name


def test_replace_mode_overwrites_the_prompt_positions():
  from prompt_tuning.prompts.per_layer import add_prompt, replace_prompt
  x = jnp.arange(2 * 4 * 3, dtype=jnp.float32).reshape(2, 4, 3)
  p = jnp.full((2, 3), 7.0)
  replaced, added = replace_prompt(p, x), add_prompt(p, x)
  np.testing.assert_array_equal(replaced[:, :2], 7.0)
  np.testing.assert_array_equal(added[:, :2], x[:, :2] + 7.0)
  np.testing.assert_array_equal(replaced[:, 2:], x[:, 2:])
  np.testing.assert_array_equal(added[:, 2:], x[:, 2:])


def test_unsupported_settings_are_one_line_errors():
  for prompt, match in [(PerLayerPrompt(prompt=Prompt(length=2), mode="mul"), "mode 'mul'"),
                        (PerLayerPrompt(prompt=Prompt(length=2, placement="suffix")), "prefix")]:
    with pytest.raises(UserError, match=match):
      init(T5(CONFIG, prompt=prompt))


def test_gin_file_builds_the_per_layer_model():
  from prompt_tuning import configurables
  from prompt_tuning.train import initialize
  from tests.train_helpers import TOY_BINDINGS, TOY_FILES
  configurables.parse([*TOY_FILES, "prompts/per_layer.gin", "prompts/attention.gin"],
                  [*TOY_BINDINGS, "MODEL_DIR = '/unused'", "PER_LAYER_MODE = 'add'"])
  model = initialize.build_model()
  assert isinstance(model.prompt, PerLayerPrompt) and model.prompt.mode == "add"
  assert model.prompt.prompt.attention == ["input->input", "input->prompt", "prompt->prompt;causal"]
