"""Hugging Face T5 v1.1 checkpoints <-> the flaxformer parameter tree.

A Hugging Face folder (e.g. `google/t5-base-lm-adapt` as downloaded) holds
`config.json` and `model.safetensors` (or shards listed in
`model.safetensors.index.json`). Tensors are read with safetensors' numpy API:
no torch, and never a pickle. Names map explicitly (`hf_name_map`); torch
`Linear` weights are `[out, in]`, so every kernel is transposed, as is the
relative attention table (HF `[buckets, heads]`, flaxformer `[heads, buckets]`).
"""
import json
import os
from typing import Any, Dict, Optional, Tuple

import numpy as np

from prompt_tuning.errors import UserError
from prompt_tuning.io.backbone import flatten_paths
from prompt_tuning.models.config import T5Config

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
# HF stores the shared embedding under up to three names; they are one tensor.
EMBEDDING_NAMES = ("shared.weight", "encoder.embed_tokens.weight", "decoder.embed_tokens.weight")
_ATTENTION = (("query", "q"), ("key", "k"), ("value", "v"), ("out", "o"))
_MLP = ("wi_0", "wi_1", "wo")
_GATED_GELU = ("gelu", "linear")


def hf_name_map(config: T5Config) -> Dict[str, Tuple[str, bool]]:
  """Flaxformer path -> (HF tensor name, whether to transpose)."""
  m: Dict[str, Tuple[str, bool]] = {"token_embedder/embedding": ("shared.weight", False)}

  def attention(ours: str, theirs: str):
    for our_name, hf_name in _ATTENTION:
      m[f"{ours}/{our_name}/kernel"] = (f"{theirs}.{hf_name}.weight", True)

  def mlp(ours: str, theirs: str):
    for name in _MLP:
      m[f"{ours}/{name}/kernel"] = (f"{theirs}.{name}.weight", True)

  for stack, layers in (("encoder", config.num_encoder_layers),
                        ("decoder", config.num_decoder_layers)):
    m[f"{stack}/relpos_bias/rel_embedding"] = (
        f"{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight", True)
    m[f"{stack}/{stack}_norm/scale"] = (f"{stack}.final_layer_norm.weight", False)
    for i in range(layers):
      ours, theirs = f"{stack}/layers_{i}", f"{stack}.block.{i}.layer"
      if stack == "encoder":
        m[f"{ours}/pre_attention_layer_norm/scale"] = (f"{theirs}.0.layer_norm.weight", False)
        attention(f"{ours}/attention", f"{theirs}.0.SelfAttention")
        m[f"{ours}/pre_mlp_layer_norm/scale"] = (f"{theirs}.1.layer_norm.weight", False)
        mlp(f"{ours}/mlp", f"{theirs}.1.DenseReluDense")
      else:
        m[f"{ours}/pre_self_attention_layer_norm/scale"] = (f"{theirs}.0.layer_norm.weight", False)
        attention(f"{ours}/self_attention", f"{theirs}.0.SelfAttention")
        m[f"{ours}/pre_cross_attention_layer_norm/scale"] = (f"{theirs}.1.layer_norm.weight", False)
        attention(f"{ours}/encoder_decoder_attention", f"{theirs}.1.EncDecAttention")
        m[f"{ours}/pre_mlp_layer_norm/scale"] = (f"{theirs}.2.layer_norm.weight", False)
        mlp(f"{ours}/mlp", f"{theirs}.2.DenseReluDense")
  m["decoder/logits_dense/kernel"] = ("lm_head.weight", True)
  return m


def _read_json(path: str, what: str) -> Dict[str, Any]:
  try:
    with open(path) as f:
      return json.load(f)
  except json.JSONDecodeError as e:
    raise UserError(f"{path} is not valid JSON ({e}); re-download the {what}") from None


def config_from_hf(hf: Dict[str, Any], source: str = "config.json") -> T5Config:
  """The T5Config of a Hugging Face T5 v1.1 `config.json` dict."""
  model_type = hf.get("model_type", "t5")
  if model_type not in ("t5", "mt5"):
    raise UserError(f"{source} has model_type {model_type!r}; only T5 v1.1 (t5/mt5) is supported")
  proj = hf.get("feed_forward_proj", "relu")
  if proj != "gated-gelu":
    raise UserError(f"{source} has feed_forward_proj {proj!r}; only T5 v1.1 (gated-gelu) "
                    "checkpoints are supported, not original T5 (relu)")
  if hf.get("tie_word_embeddings", True):
    raise UserError(f"{source} has tie_word_embeddings true; T5 v1.1 has a separate lm_head "
                    "(set it to false only if the checkpoint really has an untied lm_head.weight)")
  missing = [k for k in ("d_model", "d_kv", "d_ff", "num_heads", "num_layers", "vocab_size")
             if k not in hf]
  if missing:
    raise UserError(f"{source} lacks {missing}; is it a T5 config.json?")
  return T5Config(
      vocab_size=int(hf["vocab_size"]), emb_dim=int(hf["d_model"]), num_heads=int(hf["num_heads"]),
      head_dim=int(hf["d_kv"]), mlp_dim=int(hf["d_ff"]),
      num_encoder_layers=int(hf["num_layers"]),
      num_decoder_layers=int(hf.get("num_decoder_layers") or hf["num_layers"]),
      relative_attention_num_buckets=int(hf.get("relative_attention_num_buckets", 32)),
      relative_attention_max_distance=int(hf.get("relative_attention_max_distance", 128)),
      layer_norm_epsilon=float(hf.get("layer_norm_epsilon", 1e-6)),
      mlp_activations=_GATED_GELU)


def config_to_hf(config: T5Config) -> Dict[str, Any]:
  """The Hugging Face `config.json` dict (T5ForConditionalGeneration) of `config`."""
  if tuple(config.mlp_activations) != _GATED_GELU:
    raise UserError(f"cannot export mlp_activations {config.mlp_activations} to Hugging Face T5; "
                    "only gated-gelu ('gelu', 'linear') has an HF equivalent")
  return {
      "architectures": ["T5ForConditionalGeneration"], "model_type": "t5",
      "d_model": config.emb_dim, "d_kv": config.head_dim, "d_ff": config.mlp_dim,
      "num_heads": config.num_heads, "num_layers": config.num_encoder_layers,
      "num_decoder_layers": config.num_decoder_layers, "vocab_size": config.vocab_size,
      "relative_attention_num_buckets": config.relative_attention_num_buckets,
      "relative_attention_max_distance": config.relative_attention_max_distance,
      "layer_norm_epsilon": config.layer_norm_epsilon, "dropout_rate": config.dropout_rate,
      "feed_forward_proj": "gated-gelu", "is_gated_act": True, "dense_act_fn": "gelu_new",
      "tie_word_embeddings": False, "is_encoder_decoder": True, "initializer_factor": 1.0,
      "pad_token_id": 0, "eos_token_id": 1, "decoder_start_token_id": 0,
  }


def _tensor_files(path: str) -> Dict[str, str]:
  """HF tensor name -> the safetensors file holding it."""
  index = os.path.join(path, INDEX_FILE)
  single = os.path.join(path, WEIGHTS_FILE)
  if os.path.isfile(index):
    weight_map = _read_json(index, "checkpoint index").get("weight_map")
    if not isinstance(weight_map, dict):
      raise UserError(f"{index} has no 'weight_map'; re-download the checkpoint")
    files = {name: os.path.join(path, f) for name, f in weight_map.items()}
    for f in sorted(set(files.values())):
      if not os.path.isfile(f):
        raise UserError(f"{index} lists {os.path.basename(f)} but {f} is missing; "
                        "download every shard")
    return files
  if os.path.isfile(single):
    from safetensors import safe_open
    try:
      with safe_open(single, framework="numpy") as f:
        return {name: single for name in f.keys()}
    except Exception as e:  # safetensors raises its own error type on bad headers
      raise UserError(f"{single} is not a readable safetensors file ({e}); re-download it") from None
  if any(os.path.isfile(os.path.join(path, n)) for n in ("pytorch_model.bin", "tf_model.h5")):
    raise UserError(f"{path} has no {WEIGHTS_FILE}; only safetensors weights are read (pickled "
                    "PyTorch files are never loaded): download the safetensors revision")
  raise UserError(f"{path} has neither {WEIGHTS_FILE} nor {INDEX_FILE}")


def _read_tensors(files: Dict[str, str], names: Dict[str, str]) -> Dict[str, np.ndarray]:
  """`names` (wanted HF name -> file) read with one open per file."""
  from safetensors import safe_open
  by_file: Dict[str, list] = {}
  for name, f in names.items():
    by_file.setdefault(f, []).append(name)
  out = {}
  for f, wanted in by_file.items():
    try:
      with safe_open(f, framework="numpy") as handle:
        for name in wanted:
          out[name] = handle.get_tensor(name)
    except UserError:
      raise
    except Exception as e:
      raise UserError(f"cannot read {f} ({e}); re-download it") from None
  return out


def load_hf(path: str, dtype: Optional[str] = None,
            relative_attention_max_distance: Optional[int] = None) -> Tuple[T5Config, Dict[str, Any]]:
  """(config, numpy params in flaxformer naming) of a Hugging Face T5 v1.1 folder.

  Args:
    path: folder with `config.json` and `model.safetensors` (or sharded).
    dtype: cast parameters to this dtype (the config's `param_dtype` follows).
    relative_attention_max_distance: override the value in `config.json`.

  Raises:
    UserError: naming any missing or unexpected tensor, or a bad config.
  """
  if not os.path.isdir(path):
    raise UserError(f"Hugging Face checkpoint folder {path} does not exist")
  config_path = os.path.join(path, CONFIG_FILE)
  if not os.path.isfile(config_path):
    raise UserError(f"{path} has no {CONFIG_FILE}; pass the folder of a Hugging Face T5 v1.1 "
                    "model (config.json + model.safetensors)")
  config = config_from_hf(_read_json(config_path, "model config"), config_path)
  if relative_attention_max_distance is not None:
    config = config.replace(relative_attention_max_distance=relative_attention_max_distance)

  files = _tensor_files(path)
  name_map = hf_name_map(config)
  if "shared.weight" not in files:  # some exports keep only a per-stack alias
    alias = next((n for n in EMBEDDING_NAMES if n in files), None)
    if alias:
      name_map["token_embedder/embedding"] = (alias, False)
  wanted = {hf for hf, _ in name_map.values()}
  missing = sorted(wanted - set(files))
  unexpected = sorted(set(files) - wanted - set(EMBEDDING_NAMES))
  problems = []
  if missing:
    problems.append(f"missing {missing[:5]}{' ...' if len(missing) > 5 else ''}")
  if unexpected:
    problems.append(f"unexpected {unexpected[:5]}{' ...' if len(unexpected) > 5 else ''}")
  if problems:
    raise UserError(f"{path} does not match its {CONFIG_FILE} ({config.num_encoder_layers}+"
                    f"{config.num_decoder_layers} layers): " + "; ".join(problems))

  tensors = _read_tensors(files, {name: files[name] for name in wanted})
  params: Dict[str, Any] = {}
  for ours, (theirs, transpose) in name_map.items():
    value = tensors[theirs]
    value = np.ascontiguousarray(value.T) if transpose else value
    if dtype is not None:
      value = value.astype(np.dtype(dtype))
    _set_path(params, ours, value)
  param_dtype = np.dtype(dtype) if dtype else tensors[name_map["token_embedder/embedding"][0]].dtype
  return config.replace(param_dtype=np.dtype(param_dtype).name), params


def _set_path(tree: Dict[str, Any], path: str, value: Any) -> None:
  *parents, leaf = path.split("/")
  for key in parents:
    tree = tree.setdefault(key, {})
  tree[leaf] = value


def save_hf(path: str, config: T5Config, params: Dict[str, Any]) -> None:
  """Writes `params` (flaxformer naming) as a Hugging Face T5 v1.1 folder.

  The folder loads with `T5ForConditionalGeneration.from_pretrained(path)` and
  with `load_hf`. `path` must not already hold a `config.json`.
  """
  from safetensors.numpy import save_file
  if os.path.exists(os.path.join(path, CONFIG_FILE)):
    raise UserError(f"{path} already holds a model; choose a new folder")
  hf_config = config_to_hf(config)
  flat = flatten_paths(params)
  name_map = hf_name_map(config)
  missing = sorted(set(name_map) - set(flat))
  extra = sorted(k for k in set(flat) - set(name_map))
  if missing or extra:
    raise UserError(f"cannot export to Hugging Face T5: missing {missing[:5]}, "
                    f"no HF name for {extra[:5]} (prompt parameters are exported separately)")
  tensors = {}
  for ours, (theirs, transpose) in name_map.items():
    value = np.asarray(flat[ours])
    tensors[theirs] = np.ascontiguousarray(value.T if transpose else value)
  os.makedirs(path, exist_ok=True)
  save_file(tensors, os.path.join(path, WEIGHTS_FILE), metadata={"format": "pt"})
  with open(os.path.join(path, CONFIG_FILE), "w") as f:
    json.dump(hf_config, f, indent=2, sort_keys=True)
