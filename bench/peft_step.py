"""Hugging Face PEFT prompt tuning: one train step of a random T5 1.1-small, timed.

Runs in its own virtualenv (torch CPU, transformers, peft; see run_all.py).
Same shapes as `prompt-tuning bench`: encoder-only prompt
(`num_transformer_submodules=1`), float32, Adafactor on the prompt only.
Prints one JSON line.
"""
import argparse
import json
import resource
import statistics
import time

import torch


def build(prompt_length: int):
  """(PEFT model, Adafactor on the prompt, trainable tensors): a random T5 1.1-small, float32."""
  import peft
  import transformers

  torch.manual_seed(0)
  config = transformers.T5Config(
      vocab_size=32128, d_model=512, d_kv=64, d_ff=1024, num_layers=8, num_decoder_layers=8,
      num_heads=6, relative_attention_num_buckets=32, relative_attention_max_distance=128,
      dropout_rate=0.0, feed_forward_proj="gated-gelu", tie_word_embeddings=False,
      decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)
  model = transformers.T5ForConditionalGeneration(config)
  peft_config = peft.PromptTuningConfig(task_type=peft.TaskType.SEQ_2_SEQ_LM,
                                        num_virtual_tokens=prompt_length,
                                        num_transformer_submodules=1)
  model = peft.get_peft_model(model, peft_config)
  model.train()
  trainable = [p for p in model.parameters() if p.requires_grad]
  return model, torch.optim.Adafactor(trainable, lr=0.3), trainable


def train_step(model, optimizer, inputs, mask, labels) -> float:
  """One step; `labels` hold -100 (HF's ignore index) on padding."""
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
  args = parser.parse_args()
  if args.threads:
    torch.set_num_threads(args.threads)
  import peft
  model, optimizer, trainable = build(args.prompt_length)

  gen = torch.Generator().manual_seed(0)
  inputs = torch.randint(3, 32128, (args.batch_size, args.inputs_length), generator=gen)
  labels = torch.randint(3, 32128, (args.batch_size, args.targets_length), generator=gen)
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
  print(json.dumps({
      "framework": f"peft {peft.__version__} (torch {torch.__version__})",
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
