"""Builds what transformers computes on the Hugging Face folder that `prompt-tuning convert
--to hf` writes from the real tiny T5X checkpoint in ../shared/data, for
tests/test_convert_to_hf.py (which then needs no torch).

Two steps, the first in the project's venv, the second in one with torch + transformers<5
(`make peft_venv`)::

  prompt-tuning convert --to hf --input ../shared/data/t5x_t5_1_1_tiny/checkpoint_3 \\
      --relative_attention_max_distance 8 --output /tmp/t5x_tiny_hf
  .bench_venv/bin/python scripts/make_t5x_hf_fixture.py --hf_folder /tmp/t5x_tiny_hf

Made with transformers 4.57.6, torch 2.13.0. Writes `tests/fixtures/t5x_tiny_hf_logits.npz`:
  encoder_input_tokens  [B, Le] int32, 0 = padding
  decoder_input_tokens  [B, Ld] int32, targets shifted right (start id 0)
  decoder_target_tokens [B, Ld] int32, ending in EOS (1), then padding
  columns               [K] int32, the vocabulary ids whose logits are kept (the checkpoint
                        has 32,128: all of them would be megabytes)
  logits                [B, Ld, K] float32, transformers' logits at `columns`
  log_likelihood        [B] float64, sum of log p(target) over non-padding targets (over all
                        32,128 logits)
computed in float64 from the float32 weights on disk.
"""
import argparse
import os

import numpy as np
import torch
import transformers

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SEED = 27
LENGTHS = ((7, 4), (3, 2))  # (input tokens, target tokens), EOS included
COLUMNS = 256


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--hf_folder", required=True)
  parser.add_argument("--output", default=os.path.join(REPO, "tests", "fixtures",
                                                       "t5x_tiny_hf_logits.npz"))
  args = parser.parse_args()
  rng = np.random.default_rng(SEED)
  width_in, width_out = max(l for l, _ in LENGTHS), max(t for _, t in LENGTHS)
  enc = np.zeros((len(LENGTHS), width_in), np.int32)
  tgt = np.zeros((len(LENGTHS), width_out), np.int32)
  for i, (n_in, n_tgt) in enumerate(LENGTHS):
    enc[i, :n_in - 1] = rng.integers(2, 32000, n_in - 1)
    enc[i, n_in - 1] = 1
    tgt[i, :n_tgt - 1] = rng.integers(2, 32000, n_tgt - 1)
    tgt[i, n_tgt - 1] = 1
  dec = np.zeros_like(tgt)
  dec[:, 1:] = tgt[:, :-1]
  model = transformers.T5ForConditionalGeneration.from_pretrained(args.hf_folder).eval().double()
  enc_t = torch.from_numpy(enc).long()
  with torch.no_grad():
    logits = model(input_ids=enc_t, attention_mask=(enc_t != 0).long(),
                   decoder_input_ids=torch.from_numpy(dec).long()).logits
    log_probs = torch.log_softmax(logits, dim=-1)
    token_ll = torch.gather(log_probs, -1, torch.from_numpy(tgt).long()[..., None])[..., 0]
    log_likelihood = (token_ll * torch.from_numpy(tgt != 0)).sum(-1)
  columns = np.unique(np.concatenate([tgt.ravel(), rng.choice(logits.shape[-1], COLUMNS,
                                                              replace=False)])).astype(np.int32)
  np.savez(args.output, encoder_input_tokens=enc, decoder_input_tokens=dec,
           decoder_target_tokens=tgt, columns=columns,
           logits=logits.numpy()[..., columns].astype(np.float32),
           log_likelihood=log_likelihood.numpy().astype(np.float64))
  print(f"{args.output}: {os.path.getsize(args.output)} bytes; log_likelihood",
        log_likelihood.tolist())


if __name__ == "__main__":
  main()
