"""Hugging Face PEFT prompt tuning: one train step of a random T5 1.1, timed.

Runs in its own virtualenv on CPU (torch CPU, transformers, peft; see
run_all.py), or with a CUDA torch (`--device cuda`, bench/run_gpu.py). Same
shapes as `prompt-tuning bench`: encoder-only prompt
(`num_transformer_submodules=1`), Adafactor on the prompt only, float32 unless
`--dtype bfloat16` (the whole model in bf16, as `prompt-tuning bench --dtype
bfloat16 --frozen_dtype bfloat16` keeps activations and frozen weights in
bf16). Prints one JSON line.
"""
import argparse
import json
import resource
import statistics
import time

import torch


# T5 1.1 (d_model, d_ff, layers, heads); d_kv is 64 for all. Kept equal to
# prompt_tuning.models.config.T5_1_1_SIZES (tests/test_bench_scripts.py).
SIZES = {"small": (512, 1024, 8, 6), "base": (768, 2048, 12, 12), "large": (1024, 2816, 24, 16),
         "xl": (2048, 5120, 24, 32), "xxl": (4096, 10240, 24, 64)}


def build(prompt_length: int, size: str = "small", device: str = "cpu",
          dtype: str = "float32", dropout: float = 0.0):
  """(PEFT model, Adafactor on the prompt, trainable tensors): a random T5 1.1 of `size`,
  with `dropout` (T5's 0.1 where ours trains with `DROPOUT_RATE = 0.1`)."""
  import peft
  import transformers

  torch.manual_seed(0)
  if device.startswith("cuda"):
    # XLA computes float32 GPU matmuls in TF32 by default (JAX's "Matmul precision"); torch
    # does not unless asked. Same arithmetic on both sides.
    torch.set_float32_matmul_precision("high")
  d_model, d_ff, layers, heads = SIZES[size]
  config = transformers.T5Config(
      vocab_size=32128, d_model=d_model, d_kv=64, d_ff=d_ff, num_layers=layers,
      num_decoder_layers=layers, num_heads=heads, relative_attention_num_buckets=32,
      relative_attention_max_distance=128, dropout_rate=dropout, feed_forward_proj="gated-gelu",
      tie_word_embeddings=False, decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)
  with torch.device(device):  # weights made where they run: no host copy of a large model
    model = transformers.T5ForConditionalGeneration(config)
  model = model.to(device=device, dtype=getattr(torch, dtype))
  peft_config = peft.PromptTuningConfig(task_type=peft.TaskType.SEQ_2_SEQ_LM,
                                        num_virtual_tokens=prompt_length,
                                        num_transformer_submodules=1)
  model = peft.get_peft_model(model, peft_config)
  model.train()
  trainable = [p for p in model.parameters() if p.requires_grad]
  return model, torch.optim.Adafactor(trainable, lr=0.3), trainable


def train_step(model, optimizer, inputs, mask, labels) -> float:
  """One step; `labels` hold -100 (HF's ignore index) on padding.

  `float(loss)` waits for the device, so a CUDA step is timed whole.
  """
  optimizer.zero_grad(set_to_none=True)
  loss = model(input_ids=inputs, attention_mask=mask, labels=labels).loss
  loss.backward()
  optimizer.step()
  return float(loss)


def main() -> None:
  parser = argparse.ArgumentParser()
  parser.add_argument("--batch_size", type=int, default=8)
  parser.add_argument("--inputs_length", type=int, default=128)
  parser.add_argument("--prompt_length", type=int, default=100)
  parser.add_argument("--targets_length", type=int, default=8)
  parser.add_argument("--steps", type=int, default=10)
  parser.add_argument("--threads", type=int, default=None)
  parser.add_argument("--size", default="small", choices=sorted(SIZES))
  parser.add_argument("--device", default="cpu", help="cpu or cuda")
  parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
  parser.add_argument("--dropout_rate", type=float, default=0.0)
  args = parser.parse_args()
  if args.threads:
    torch.set_num_threads(args.threads)
  import peft
  model, optimizer, trainable = build(args.prompt_length, args.size, args.device, args.dtype,
                                      args.dropout_rate)

  gen = torch.Generator().manual_seed(0)
  inputs = torch.randint(3, 32128, (args.batch_size, args.inputs_length), generator=gen)
  labels = torch.randint(3, 32128, (args.batch_size, args.targets_length), generator=gen)
  inputs, labels = inputs.to(args.device), labels.to(args.device)
  mask = torch.ones_like(inputs)

  def step():
    return train_step(model, optimizer, inputs, mask, labels)

  start = time.perf_counter()
  step()  # warm-up (allocator, kernels)
  first_s = time.perf_counter() - start
  times = []
  for _ in range(args.steps):
    start = time.perf_counter()
    loss = step()
    times.append(time.perf_counter() - start)
  cuda = args.device.startswith("cuda")
  print(json.dumps({
      "framework": f"peft {peft.__version__} (torch {torch.__version__})",
      "size": args.size, "device": torch.cuda.get_device_name() if cuda else "cpu",
      "dtype": args.dtype, "dropout_rate": args.dropout_rate,
      "tf32_matmul": torch.backends.cuda.matmul.allow_tf32,
      "device_peak_mb": torch.cuda.max_memory_allocated() / 2 ** 20 if cuda else None,
      "batch_size": args.batch_size, "inputs_length": args.inputs_length,
      "prompt_length": args.prompt_length, "targets_length": args.targets_length,
      "threads": torch.get_num_threads(), "steps": args.steps,
      "median_step_s": statistics.median(times), "min_step_s": min(times),
      "first_step_s": first_s, "loss": loss,
      "trainable_parameters": sum(p.numel() for p in trainable),
      "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
  }), flush=True)


if __name__ == "__main__":
  main()
