"""The T5 1.1 encoder-decoder with a hook for a soft prompt on the encoder input.

Parameter tree (flaxformer names, so T5X checkpoints load by name)::

  token_embedder/embedding                                [vocab, embed]
  encoder/relpos_bias/rel_embedding                       [heads, relpos_buckets]
  encoder/layers_i/{pre_attention_layer_norm,pre_mlp_layer_norm}/scale
  encoder/layers_i/attention/{query,key,value,out}/kernel
  encoder/layers_i/mlp/{wi_0,wi_1,wo}/kernel
  encoder/encoder_norm/scale
  decoder/relpos_bias/rel_embedding
  decoder/layers_i/{pre_self_attention,pre_cross_attention,pre_mlp}_layer_norm/scale
  decoder/layers_i/{self_attention,encoder_decoder_attention}/{query,key,value,out}/kernel
  decoder/layers_i/mlp/{wi_0,wi_1,wo}/kernel
  decoder/decoder_norm/scale
  decoder/logits_dense/kernel                             [embed, vocab]
  prompt/...                                              (only with a prompt module)
  <name>/...                                              (each of `extras`, e.g. `info/`)
  <module path>/<insertion>/...                           (only with a delta plan)

These paths (without `prompt/`, extras and deltas) are the *backbone*: what a
checkpoint must hold. Everything else the model defines is new and created by
`model.init` (see `prompt_tuning.train.initialize`). `T5(config, deltas=plan)`
inserts trainable deltas (LoRA, adapters, biases, ...) into the modules whose
paths the plan's regexes match (`models/deltas.py`); `delta_sites(config)`
lists those paths and what each module can host.
"""
from typing import Callable, Dict, Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from prompt_tuning.errors import UserError
from prompt_tuning.models.config import REMAT_POLICIES, T5Config, remat_policy
from prompt_tuning.models.deltas import NO_DELTAS, DeltaPlan, SiteInfo, path_matches
from prompt_tuning.models.layers import (Dense, Embed, GatedMlp, MultiHeadAttention,
                                         RMSNorm, RelativePositionBiases,
                                         attention_bias_from_mask)
from prompt_tuning.models.packed import causal_segment_mask, segment_mask

Array = jax.Array


def _kw(config: T5Config):
  return dict(dtype=jnp.dtype(config.dtype), param_dtype=jnp.dtype(config.param_dtype))


class EncoderLayer(nn.Module):
  config: T5Config
  deltas: DeltaPlan = NO_DELTAS

  @nn.compact
  def __call__(self, x: Array, bias: Array, deterministic: bool) -> Array:
    c = self.config
    kw = dict(_kw(c), deltas=self.deltas)
    drop = nn.Dropout(c.dropout_rate)
    h = RMSNorm(c.layer_norm_epsilon, **kw, name="pre_attention_layer_norm")(x)
    h = MultiHeadAttention(c.num_heads, c.head_dim, c.dropout_rate, **kw, name="attention")(
        h, h, bias, deterministic=deterministic)
    x = x + drop(h, deterministic=deterministic)
    h = RMSNorm(c.layer_norm_epsilon, **kw, name="pre_mlp_layer_norm")(x)
    h = GatedMlp(c.mlp_dim, c.mlp_activations, c.dropout_rate, **kw, name="mlp")(h, deterministic)
    x = x + drop(h, deterministic=deterministic)
    return nn.with_logical_constraint(x, ("batch", "length", "embed"))


class DecoderLayer(nn.Module):
  config: T5Config
  deltas: DeltaPlan = NO_DELTAS

  @nn.compact
  def __call__(self, x: Array, encoded: Array, self_bias: Array, cross_bias: Array,
               deterministic: bool, decode: bool) -> Array:
    c = self.config
    kw = dict(_kw(c), deltas=self.deltas)
    drop = nn.Dropout(c.dropout_rate)
    h = RMSNorm(c.layer_norm_epsilon, **kw, name="pre_self_attention_layer_norm")(x)
    h = MultiHeadAttention(c.num_heads, c.head_dim, c.dropout_rate, **kw, name="self_attention")(
        h, h, self_bias, decode=decode, deterministic=deterministic)
    x = x + drop(h, deterministic=deterministic)
    h = RMSNorm(c.layer_norm_epsilon, **kw, name="pre_cross_attention_layer_norm")(x)
    h = MultiHeadAttention(c.num_heads, c.head_dim, c.dropout_rate, **kw,
                           name="encoder_decoder_attention")(
                               h, encoded, cross_bias, deterministic=deterministic)
    x = x + drop(h, deterministic=deterministic)
    h = RMSNorm(c.layer_norm_epsilon, **kw, name="pre_mlp_layer_norm")(x)
    h = GatedMlp(c.mlp_dim, c.mlp_activations, c.dropout_rate, **kw, name="mlp")(h, deterministic)
    x = x + drop(h, deterministic=deterministic)
    return nn.with_logical_constraint(x, ("batch", "length", "embed"))


def _layer_class(cls, config: T5Config):
  policy = REMAT_POLICIES[remat_policy(config)]
  if policy is None:
    return cls
  # Argument indices count `self`; the booleans select Python control flow.
  static = (3,) if cls is EncoderLayer else (5, 6)
  # 'full' keeps nothing: nn.remat's default (policy None), as before policies existed.
  kept = None if policy == "nothing_saveable" else getattr(jax.checkpoint_policies, policy)
  return nn.remat(cls, static_argnums=static, policy=kept)


class Encoder(nn.Module):
  """Bidirectional stack over (prompt +) embedded inputs."""
  config: T5Config
  deltas: DeltaPlan = NO_DELTAS

  @nn.compact
  def __call__(self, x: Array, valid: Array, deterministic: bool = True,
               mask: Optional[Array] = None,
               layer_prompt: Optional[Callable[[int, Array], Array]] = None) -> Array:
    """x: `[B, L, E]` embedded inputs, valid: `[B, L]` bool -> `[B, L, E]`.

    `mask`: `[B, L, L]` bool self-attention mask (a prompt's visibility setting);
    None: every position sees every valid one. `layer_prompt(i, x)`: edits the
    input of each layer i >= 1 (per-layer prompts).
    """
    c = self.config
    positions = jnp.arange(x.shape[1], dtype=jnp.int32)
    bias = RelativePositionBiases(c.relative_attention_num_buckets,
                                  c.relative_attention_max_distance, c.num_heads,
                                  **_kw(c), name="relpos_bias")(positions, positions, True)
    bias = bias + attention_bias_from_mask(valid[:, None, None, :] if mask is None
                                           else mask[:, None])
    x = nn.Dropout(c.dropout_rate)(x, deterministic=deterministic)
    layer = _layer_class(EncoderLayer, c)
    for i in range(c.num_encoder_layers):
      if layer_prompt is not None and i > 0:
        x = layer_prompt(i, x)
      x = layer(c, self.deltas, name=f"layers_{i}")(x, bias, deterministic)
    x = RMSNorm(c.layer_norm_epsilon, **_kw(c), deltas=self.deltas, name="encoder_norm")(x)
    return nn.Dropout(c.dropout_rate)(x, deterministic=deterministic)


class Decoder(nn.Module):
  """Causal stack with cross-attention; ends in the untied `logits_dense`."""
  config: T5Config
  deltas: DeltaPlan = NO_DELTAS

  @nn.compact
  def __call__(self, y: Array, encoded: Array, encoder_valid: Array,
               deterministic: bool = True, decode: bool = False,
               segments: int = 1, decoder_segment_ids: Optional[Array] = None,
               encoder_segment_ids: Optional[Array] = None) -> Tuple[Array, Array]:
    """y: `[B, Lt, E]` embedded decoder inputs (`[B, 1, E]` when decoding).

    Packed rows (`data/packing.py`): `decoder_segment_ids` `[B, Lt]` and
    `encoder_segment_ids` `[B, L']` confine self-attention (causal) and
    cross-attention to each target's own segment (`models/packed.py`).

    `segments` > 1 packs that many independent target sequences of `Lt / segments`
    tokens into each row (rank classification's candidates): each attends
    causally to itself only and its positions restart at 0, so every segment
    gets the logits it would get alone, while the encoder output (and each
    layer's cross-attention keys and values) is shared by all of them.

    Returns:
      (logits `[B, Lt, V]` float32, final hidden state `[B, Lt, E]`: what the
      LM head reads, after the final norm and dropout).
    """
    c = self.config
    relpos = RelativePositionBiases(c.relative_attention_num_buckets,
                                    c.relative_attention_max_distance, c.num_heads,
                                    **_kw(c), name="relpos_bias")
    if decode and self.has_variable("cache", "decode_position"):
      # One new position per call; keys span the whole cache.
      position = self.variable("cache", "decode_position", lambda: jnp.array(0, jnp.int32))
      # Its shape, [max_decode_length], is fixed by the init call.
      key_positions = self.get_variable("cache", "key_positions")
      query_positions = position.value[None]
      self_bias = relpos(query_positions, key_positions, False)
      self_bias = self_bias + attention_bias_from_mask(key_positions <= position.value)[None, None, None]
      position.value = position.value + 1
    else:
      if y.shape[1] % segments or (decode and segments != 1):
        raise ValueError(f"decoder length {y.shape[1]} does not split into {segments} segments"
                         " (or segments with decode=True)")
      positions = jnp.arange(y.shape[1], dtype=jnp.int32)
      if decode:  # init call: size the position state beside the layer caches
        self.variable("cache", "decode_position", lambda: jnp.array(0, jnp.int32))
        self.variable("cache", "key_positions", lambda: positions)
      causal = positions[None, :] <= positions[:, None]
      if segments > 1:
        segment, positions = jnp.divmod(positions, y.shape[1] // segments)
        causal = causal & (segment[None, :] == segment[:, None])
      if decoder_segment_ids is not None:
        causal = causal_segment_mask(decoder_segment_ids)[:, None]  # [B, 1, Lt, Lt]
      self_bias = relpos(positions, positions, False) + attention_bias_from_mask(causal)
    if decoder_segment_ids is not None:
      cross_bias = attention_bias_from_mask(
          segment_mask(decoder_segment_ids, encoder_segment_ids)[:, None])
    else:
      cross_bias = attention_bias_from_mask(encoder_valid[:, None, None, :])

    y = nn.Dropout(c.dropout_rate)(y, deterministic=deterministic)
    layer = _layer_class(DecoderLayer, c)
    for i in range(c.num_decoder_layers):
      y = layer(c, self.deltas, name=f"layers_{i}")(y, encoded, self_bias, cross_bias,
                                                   deterministic, decode)
    y = RMSNorm(c.layer_norm_epsilon, **_kw(c), deltas=self.deltas, name="decoder_norm")(y)
    y = nn.Dropout(c.dropout_rate)(y, deterministic=deterministic)
    logits = Dense(c.vocab_size, ("embed", "vocab"), **_kw(c), deltas=self.deltas,
                   name="logits_dense")(y)
    logits = nn.with_logical_constraint(logits, ("batch", "length", "vocab"))
    return logits.astype(jnp.float32), y


Features = Dict[str, Array]
RESERVED_NAMES = ("token_embedder", "encoder", "decoder", "prompt")


class T5(nn.Module):
  """T5 1.1 encoder-decoder. `prompt`, if set, edits the embedded encoder input.

  The prompt module is called as `prompt(tokens [B, L], embedded [B, L, E],
  embedding_table [V, E], deterministic) -> (embedded [B, L', E], valid [B, L'])`; its
  parameters land under the top-level `prompt/` path. `deltas` (default: none)
  inserts trainable deltas into the modules its rules match; see `delta_sites`.

  `extras` are a method's own modules that the forward pass does not use
  (e.g. InfoPrompt's critics): `(name, factory)` pairs, each module's
  parameters under the top-level `name/` path. Whenever parameters are being
  created, each extra is called once with `features()`'s dict so that it can
  create them; training code reaches them with `model.apply(..., method=...)`.
  """
  config: T5Config
  prompt: Optional[nn.Module] = None
  deltas: DeltaPlan = NO_DELTAS
  extras: Tuple[Tuple[str, Callable[[], nn.Module]], ...] = ()

  def setup(self):
    c = self.config
    if self.deltas:
      check_plan(self.deltas, c)
    self.token_embedder = Embed(c.vocab_size, c.emb_dim, **_kw(c))
    self.encoder = Encoder(c, self.deltas)
    self.decoder = Decoder(c, self.deltas)
    for name, make in self.extras:
      if name in RESERVED_NAMES:
        raise ValueError(f"model extra {name!r} would shadow the model's own {name!r}")
      setattr(self, name, make())

  def embed_encoder_inputs(self, encoder_input_tokens: Array, enable_dropout: bool = False,
                           encoder_segment_ids: Optional[Array] = None,
                           encoder_positions: Optional[Array] = None) -> Tuple[Array, Array]:
    """`[B, L]` tokens -> (`[B, L', E]` embeddings incl. prompt, `[B, L']` valid mask).

    Packed rows (`encoder_segment_ids`, `encoder_positions` `[B, L]`, `data/packing.py`)
    already hold every segment's prompt slots: L' = L, and the prompt fills them.
    """
    x = self.token_embedder(encoder_input_tokens)
    if encoder_segment_ids is not None:
      valid = encoder_segment_ids > 0
      if self.prompt is not None:
        x = self.prompt.packed(encoder_input_tokens, x, self.token_embedder.embedding,
                               encoder_segment_ids, encoder_positions,
                               deterministic=not enable_dropout)
      return nn.with_logical_constraint(x, ("batch", "length", "embed")), valid
    valid = encoder_input_tokens > 0
    if self.prompt is not None:
      extra = {}
      if getattr(self.prompt, "needs_prompt_free_encoding", False):
        extra["prompt_free"] = self.prompt_free_encoding(x, valid)
      x, valid = self.prompt(encoder_input_tokens, x, self.token_embedder.embedding,
                             deterministic=not enable_dropout, **extra)
    return nn.with_logical_constraint(x, ("batch", "length", "embed")), valid

  def prompt_free_encoding(self, embedded: Array, valid: Array) -> Tuple[Array, Array]:
    """(`[B, L, E]` encoder outputs, `[B, L]` valid) of the bare input, for a prompt
    generated from the input (InfoPrompt §4.2): dropout off, no gradient."""
    encoded = self.encoder(embedded, valid, deterministic=True)
    return jax.lax.stop_gradient(encoded), valid

  def encode(self, encoder_input_tokens: Array, enable_dropout: bool = False,
             encoder_segment_ids: Optional[Array] = None,
             encoder_positions: Optional[Array] = None) -> Tuple[Array, Array]:
    """`[B, L]` tokens -> (encoded `[B, L', E]`, valid `[B, L']`); L' = L + prompt length,
    or L for packed rows (`embed_encoder_inputs`), whose segments see only themselves."""
    x, valid = self.embed_encoder_inputs(encoder_input_tokens, enable_dropout,
                                         encoder_segment_ids, encoder_positions)
    if encoder_segment_ids is not None:
      mask = segment_mask(encoder_segment_ids, encoder_segment_ids)
    else:
      mask = self.prompt.attention_mask(valid) if hasattr(self.prompt, "attention_mask") else None
    layer_prompt = None
    if hasattr(self.prompt, "layer"):  # per-layer prompts
      layer_prompt = lambda i, h: self.prompt.layer(i, h, self.token_embedder.embedding)
    return self.encoder(x, valid, deterministic=not enable_dropout, mask=mask,
                        layer_prompt=layer_prompt), valid

  def decode(self, encoded: Array, encoder_valid: Array, decoder_input_tokens: Array,
             enable_dropout: bool = False, decode: bool = False, segments: int = 1,
             decoder_segment_ids: Optional[Array] = None,
             encoder_segment_ids: Optional[Array] = None) -> Array:
    """Decoder logits `[B, Lt, V]` (float32) for `[B, Lt]` decoder input tokens
    (`segments` equal-length independent sequences per row, or packed rows' segment ids;
    see `Decoder`)."""
    y = self.token_embedder(decoder_input_tokens)
    logits, _ = self.decoder(y, encoded, encoder_valid, deterministic=not enable_dropout,
                             decode=decode, segments=segments,
                             decoder_segment_ids=decoder_segment_ids,
                             encoder_segment_ids=encoder_segment_ids)
    return logits

  def __call__(self, encoder_input_tokens: Array, decoder_input_tokens: Array,
               enable_dropout: bool = False, encoder_segment_ids: Optional[Array] = None,
               encoder_positions: Optional[Array] = None,
               decoder_segment_ids: Optional[Array] = None) -> Array:
    """Teacher-forced logits `[B, Lt, V]`; packed rows with the segment ids and positions
    of `data/packing.py` (all three, or none).

    Also sows the `features` dict into the `intermediates` collection (a no-op
    unless the caller makes it mutable), for losses that need more than logits.
    """
    encoded, valid = self.encode(encoder_input_tokens, enable_dropout, encoder_segment_ids,
                                 encoder_positions)
    y = self.token_embedder(decoder_input_tokens)
    logits, hidden = self.decoder(y, encoded, valid, deterministic=not enable_dropout,
                                  decoder_segment_ids=decoder_segment_ids,
                                  encoder_segment_ids=encoder_segment_ids)
    features = {"encoded": encoded, "encoder_valid": valid, "decoder_hidden": hidden}
    for key, value in features.items():
      self.sow("intermediates", key, value)
    if self.extras and self.is_mutable_collection("params"):
      features = {**features, **self.input_features(encoder_input_tokens)}
      for name, _ in self.extras:
        getattr(self, name)(features)
    return logits

  def input_features(self, encoder_input_tokens: Array) -> Features:
    """`input_embeddings` `[B, L, E]` and `input_valid` `[B, L]` of the bare input,
    plus `prompt` (what the encoder sees as the prompt) when there is one: `[P, E]`, or
    `[B, P, E]` for a prompt generated from each input."""
    out = {"input_embeddings": self.token_embedder(encoder_input_tokens),
           "input_valid": encoder_input_tokens > 0}
    if self.prompt is not None and hasattr(self.prompt, "value"):
      out["prompt"] = self.prompt.value(self.token_embedder.embedding, deterministic=True)
    elif self.prompt is not None and hasattr(self.prompt, "generate"):  # [B, P, E] per example
      embedded, valid = out["input_embeddings"], out["input_valid"]
      prompt_free = (self.prompt_free_encoding(embedded, valid)
                     if self.prompt.needs_prompt_free_encoding else None)
      out["prompt"] = self.prompt.generate(encoder_input_tokens, embedded, prompt_free)
    elif self.prompt is not None and hasattr(self.prompt, "task_prompts"):
      raise UserError("a multi-task prompt has no single prompt for a method's own modules "
                      "(InfoPrompt); drop methods/infoprompt.gin or prompts/multitask.gin")
    return out


def delta_sites(config: T5Config) -> Dict[str, SiteInfo]:
  """Every module that can host a delta insertion: `{path: SiteInfo}`, in model order.

  Paths are those the layers see at run time (`encoder/layers_0/attention/query`),
  so plan regexes, parameter counts and APET's selection all work from this list.
  """
  c = config
  e, joined, m = c.emb_dim, c.num_heads * c.head_dim, c.mlp_dim
  norm = SiteInfo("norm", e, "embed")
  attention = SiteInfo("attention", e, "embed", num_heads=c.num_heads, head_dim=c.head_dim)
  projection = SiteInfo("dense", joined, "joined_kv", e, "embed")
  out = SiteInfo("dense", e, "embed", joined, "joined_kv")
  wi = SiteInfo("dense", m, "mlp", e, "embed")
  wo = SiteInfo("dense", e, "embed", m, "mlp")
  mlp = SiteInfo("mlp", e, "embed", hidden=m)
  wi_names = ([f"wi_{i}" for i in range(len(c.mlp_activations))]
              if len(c.mlp_activations) > 1 else ["wi"])
  sites: Dict[str, SiteInfo] = {}

  def add_attention(prefix: str) -> None:
    sites[prefix] = attention
    for name in ("query", "key", "value"):
      sites[f"{prefix}/{name}"] = projection
    sites[f"{prefix}/out"] = out

  def add_mlp(prefix: str) -> None:
    sites[prefix] = mlp
    for name in wi_names:
      sites[f"{prefix}/{name}"] = wi
    sites[f"{prefix}/wo"] = wo

  for i in range(c.num_encoder_layers):
    layer = f"encoder/layers_{i}"
    sites[f"{layer}/pre_attention_layer_norm"] = norm
    add_attention(f"{layer}/attention")
    sites[f"{layer}/pre_mlp_layer_norm"] = norm
    add_mlp(f"{layer}/mlp")
  sites["encoder/encoder_norm"] = norm
  for i in range(c.num_decoder_layers):
    layer = f"decoder/layers_{i}"
    sites[f"{layer}/pre_self_attention_layer_norm"] = norm
    add_attention(f"{layer}/self_attention")
    sites[f"{layer}/pre_cross_attention_layer_norm"] = norm
    add_attention(f"{layer}/encoder_decoder_attention")
    sites[f"{layer}/pre_mlp_layer_norm"] = norm
    add_mlp(f"{layer}/mlp")
  sites["decoder/decoder_norm"] = norm
  sites["decoder/logits_dense"] = SiteInfo("dense", c.vocab_size, "vocab", e, "embed")
  return sites


def check_plan(plan: DeltaPlan, config: T5Config) -> None:
  """Raises `UserError` for a rule that matches no module able to host it, or a name clash."""
  sites = delta_sites(config)
  for pattern, ins in plan.rules:
    if not any(ins.site(info.kind) is not None and path_matches(pattern, path)
               for path, info in sites.items()):
      sample = ", ".join(list(sites)[1:4])
      raise UserError(f"delta rule {pattern!r} ({type(ins).__name__}) matches no module that can "
                      f"host it; module paths look like {sample}; fix the regex")
  for path, info in sites.items():
    matched = plan.matching(path, info.kind)
    for ins in matched:
      ins.check(path, info)
    names = [ins.name for ins in matched]
    if len(set(names)) != len(names):
      raise UserError(f"delta plan puts two insertions named {sorted(names)} on {path}; give one "
                      "of them another `name`")
