"""Residual Prompt Tuning (Razdaibiedina et al. 2023) as a prompt reparameterization.

Each prompt token is passed through a bottleneck MLP with a skip connection::

  P'_i = P_i + LayerNorm(Dropout(W_up · act(W_down · P_i + b_down) + b_up))

in the official code's order (Linear -> ReLU -> Linear -> Dropout -> LayerNorm, + x).

The MLP is shared by all tokens (default) or owned by each token
(`separate_mlps=True`, held as stacked `[P, ...]` weights so every token is
computed in one einsum). The MLP is trained together with `P`; both live under
`prompt/residual/`, so the default trainable regex `prompt/.*` picks them up.
After training the MLP is folded away: `prompts.prompt.encoder_prompt` returns
`P'`, which is what gets exported and what a plain `Prompt` initialised
`from_file` evaluates with. The official code trains `P` and the MLP with one
AdamW at 0.3 (`configs/papers/residual2023.gin`); `optim.partitioned` can give
the MLP its own optimizer (`configs/methods/residual.gin`).

Parameters (relative to the module, `S = ()` shared or `(P,)` separate)::

  down/kernel      S + [E, m]   axes (prompt,) prompt_embed, prompt_mlp
  down/bias        S + [m]
  up/kernel        S + [m, E]
  up/bias          S + [E]
  layer_norm/scale S + [E]      (only with layer_norm=True)
  layer_norm/bias  S + [E]
"""
from typing import Callable, Dict, Optional

import flax.linen as nn
import gin
import jax
import jax.numpy as jnp
import numpy as np

from prompt_tuning.errors import UserError

Array = jax.Array
# Logical axis of the bottleneck; unmapped in the rules, hence replicated.
MLP_AXIS = "prompt_mlp"
INIT_STYLES = ("lecun", "torch")
ACTIVATIONS: Dict[str, Callable[[Array], Array]] = {
    "relu": jax.nn.relu,
    "gelu": jax.nn.gelu,
    "silu": jax.nn.silu,
    "tanh": jnp.tanh,
    "sigmoid": jax.nn.sigmoid,
    "linear": lambda x: x,
}


class _TokenwiseDense(nn.Module):
  """`[P, in] -> [P, out]` affine map, shared by tokens or one per token."""
  features: int
  separate: bool
  in_axis: str
  out_axis: str
  init_style: str = "lecun"
  kernel_init: Optional[Callable] = None

  @nn.compact
  def __call__(self, x: Array) -> Array:
    tokens, width = x.shape
    lead, lead_axes = ((tokens,), ("prompt",)) if self.separate else ((), ())
    if self.init_style == "torch":  # PyTorch nn.Linear: both uniform in ±1/sqrt(fan_in)
      kernel_init = bias_init = _uniform(1.0 / np.sqrt(width))
    else:
      kernel_init, bias_init = nn.initializers.lecun_normal(), nn.initializers.zeros
    kernel_init = self.kernel_init or kernel_init
    if self.separate:
      # Initialise each token's kernel as an independent [in, out] matrix.
      kernel_init = _stacked(kernel_init)
    kernel = self.param(
        "kernel", nn.with_logical_partitioning(kernel_init, lead_axes + (self.in_axis, self.out_axis)),
        lead + (width, self.features), jnp.float32)
    bias = self.param(
        "bias", nn.with_logical_partitioning(bias_init, lead_axes + (self.out_axis,)),
        lead + (self.features,), jnp.float32)
    equation = "pi,pio->po" if self.separate else "pi,io->po"
    return jnp.einsum(equation, x, kernel) + bias


class _TokenwiseLayerNorm(nn.Module):
  """LayerNorm over the embedding axis with learned scale and bias."""
  separate: bool
  epsilon: float = 1e-5

  @nn.compact
  def __call__(self, x: Array) -> Array:
    tokens, width = x.shape
    lead, lead_axes = ((tokens,), ("prompt",)) if self.separate else ((), ())
    axes = lead_axes + ("prompt_embed",)
    scale = self.param("scale", nn.with_logical_partitioning(nn.initializers.ones, axes),
                       lead + (width,), jnp.float32)
    bias = self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros, axes),
                      lead + (width,), jnp.float32)
    mean = jnp.mean(x, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(x - mean), axis=-1, keepdims=True)
    return (x - mean) * jax.lax.rsqrt(var + self.epsilon) * scale + bias


def _uniform(bound: float) -> Callable:
  return lambda rng, shape, dtype=jnp.float32: jax.random.uniform(rng, shape, dtype, -bound, bound)


def _stacked(init: Callable) -> Callable:
  """Lifts a 2-D initializer to `[P, in, out]` so fan-in/out ignore the P axis."""
  def stacked_init(rng, shape, dtype=jnp.float32):
    keys = jax.random.split(rng, shape[0])
    return jax.vmap(lambda k: init(k, shape[1:], dtype))(keys)
  return stacked_init


@gin.configurable
class ResidualReparameterization(nn.Module):
  """`[P, E] -> [P, E]`: `P + LayerNorm(W_up · act(W_down · P))` per token.

  Attributes:
    bottleneck: hidden size m of the MLP (official scripts: 800).
    activation: one of `ACTIVATIONS` (paper: relu).
    dropout_rate: dropout on the MLP branch (before LayerNorm, as in the official
      code); active only when not `deterministic`.
    layer_norm: apply LayerNorm to the MLP output (paper: on).
    residual: add the skip connection `P +` (off only for ablation).
    separate_mlps: one MLP per prompt token instead of one shared MLP.
    init_style: `torch` (PyTorch `nn.Linear`: kernels and biases uniform in
      ±1/√fan_in), the official code's initialization, or `lecun` (Flax:
      LeCun-normal kernels, zero biases).
    down_init, up_init: explicit kernel initializers (override `init_style`);
      `up_init=nn.initializers.zeros` makes the MLP output constant at start
      (with LayerNorm off, `P' = P` at step 0).
  """
  bottleneck: int = 800
  activation: str = "relu"
  dropout_rate: float = 0.0
  layer_norm: bool = True
  residual: bool = True
  separate_mlps: bool = False
  init_style: str = "torch"
  down_init: Optional[Callable] = None
  up_init: Optional[Callable] = None

  @nn.compact
  def __call__(self, prompt: Array, deterministic: bool = True) -> Array:
    """prompt `[P, E]` -> reparameterized prompt `[P, E]` (float32)."""
    if self.activation not in ACTIVATIONS:
      raise UserError(f"ResidualReparameterization.activation={self.activation!r} is unknown; "
                      f"choose one of {sorted(ACTIVATIONS)}")
    if self.bottleneck < 1:
      raise UserError(f"ResidualReparameterization.bottleneck={self.bottleneck} must be >= 1")
    if self.init_style not in INIT_STYLES:
      raise UserError(f"ResidualReparameterization.init_style={self.init_style!r} is unknown; "
                      f"choose one of {INIT_STYLES}")
    x = prompt.astype(jnp.float32)
    hidden = _TokenwiseDense(self.bottleneck, self.separate_mlps, "prompt_embed", MLP_AXIS,
                             self.init_style, self.down_init, name="down")(x)
    hidden = ACTIVATIONS[self.activation](hidden)
    out = _TokenwiseDense(x.shape[-1], self.separate_mlps, MLP_AXIS, "prompt_embed",
                          self.init_style, self.up_init, name="up")(hidden)
    # The official code's order: Linear -> ReLU -> Linear -> Dropout -> LayerNorm, then + x.
    out = nn.Dropout(self.dropout_rate)(out, deterministic=deterministic)
    if self.layer_norm:
      out = _TokenwiseLayerNorm(self.separate_mlps, name="layer_norm")(out)
    return x + out if self.residual else out


def mlp_parameter_count(embed_dim: int, bottleneck: int, prompt_length: int,
                        separate_mlps: bool = False, layer_norm: bool = True) -> int:
  """Number of MLP parameters the reparameterization adds on top of `P`."""
  per_mlp = 2 * embed_dim * bottleneck + bottleneck + embed_dim + (2 * embed_dim if layer_norm else 0)
  return per_mlp * (prompt_length if separate_mlps else 1)

