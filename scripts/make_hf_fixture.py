"""Builds the tiny Hugging Face T5 v1.1 fixture used by the parity tests.

Needs torch + transformers, which are NOT part of the project's install; use a
separate virtualenv::

  python3 -m venv /tmp/torchvenv
  /tmp/torchvenv/bin/pip install torch "transformers<5" safetensors numpy
  /tmp/torchvenv/bin/python scripts/make_hf_fixture.py

transformers 5 ties `lm_head` to the shared embedding for every T5 (its
config forces `tie_word_embeddings=True`), so it cannot build an untied T5 1.1
model; the fixture was made with transformers 4.57.6.

Writes to `tests/fixtures/hf_t5_tiny/` (or `--output`):

  config.json, model.safetensors   a random T5ForConditionalGeneration
                                   (gated-gelu, untied lm_head) via save_pretrained
  reference.npz                    inputs and what transformers computes on them:
    encoder_input_tokens  [B, Le] int32, 0 = padding (every row padded differently)
    decoder_input_tokens  [B, Ld] int32, targets shifted right (start id 0)
    decoder_target_tokens [B, Ld] int32, ending in EOS (1), then padding
    logits                [B, Ld, V] float32
    log_likelihood        [B] float64, sum of log p(target) over non-padding targets
    greedy_tokens         [B, N] int32, `generate` greedy output without the start id

References are computed in float64 from the float32 weights written to disk,
so they are the exact values an f32 implementation approximates.
"""
import argparse
import os

import numpy as np
import torch
import transformers

SEED = 20240531
VOCAB = 128
EOS, PAD = 1, 0
# (input length, target length) of each example; all shorter than the padded
# widths so every row exercises the masks.
LENGTHS = ((5, 3), (12, 6), (1, 1), (9, 4))
ENCODER_WIDTH, DECODER_WIDTH = 12, 6
GREEDY_STEPS = 8


def build_model() -> transformers.T5ForConditionalGeneration:
  config = transformers.T5Config(
      vocab_size=VOCAB, d_model=32, d_kv=8, d_ff=64, num_heads=4, num_layers=2,
      num_decoder_layers=2, relative_attention_num_buckets=32,
      relative_attention_max_distance=128, feed_forward_proj="gated-gelu",
      tie_word_embeddings=False, dropout_rate=0.0, pad_token_id=PAD, eos_token_id=EOS,
      decoder_start_token_id=PAD)
  torch.manual_seed(SEED)
  model = transformers.T5ForConditionalGeneration(config).eval()
  with torch.no_grad():
    for name, p in model.named_parameters():
      if "layer_norm" in name:
        # Non-unit scales so a mis-mapped norm cannot go unnoticed.
        p.copy_(1.0 + 0.3 * torch.randn_like(p))
      elif "relative_attention_bias" in name:
        # Large enough that a transposed or mis-bucketed table changes logits.
        p.copy_(torch.randn_like(p))
    # A zero pad row keeps the pad logit at 0, so greedy outputs are real
    # tokens rather than ambiguous with the padding after EOS.
    model.lm_head.weight[PAD].zero_()
  return model


def make_inputs(rng: np.random.Generator):
  enc = np.zeros((len(LENGTHS), ENCODER_WIDTH), np.int32)
  tgt = np.zeros((len(LENGTHS), DECODER_WIDTH), np.int32)
  for i, (n_in, n_tgt) in enumerate(LENGTHS):
    enc[i, :n_in - 1] = rng.integers(2, VOCAB, n_in - 1)
    enc[i, n_in - 1] = EOS
    tgt[i, :n_tgt - 1] = rng.integers(2, VOCAB, n_tgt - 1)
    tgt[i, n_tgt - 1] = EOS
  dec = np.zeros_like(tgt)
  dec[:, 1:] = tgt[:, :-1]
  return enc, dec, tgt


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--output", default=os.path.join(
      os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures", "hf_t5_tiny"))
  args = parser.parse_args()

  model = build_model()
  os.makedirs(args.output, exist_ok=True)
  model.save_pretrained(args.output, safe_serialization=True)

  enc, dec, tgt = make_inputs(np.random.default_rng(SEED))
  model = model.double()
  enc_t, dec_t = torch.from_numpy(enc).long(), torch.from_numpy(dec).long()
  mask = (enc_t != PAD).long()
  with torch.no_grad():
    logits = model(input_ids=enc_t, attention_mask=mask, decoder_input_ids=dec_t).logits
    log_probs = torch.log_softmax(logits, dim=-1)
    token_ll = torch.gather(log_probs, -1, torch.from_numpy(tgt).long()[..., None])[..., 0]
    log_likelihood = (token_ll * torch.from_numpy(tgt != PAD)).sum(-1)
    generated = model.generate(input_ids=enc_t, attention_mask=mask, do_sample=False,
                               num_beams=1, max_new_tokens=GREEDY_STEPS, min_new_tokens=0)
  greedy = np.zeros((len(enc), GREEDY_STEPS), np.int32)
  out = generated[:, 1:].numpy()  # drop the decoder start id
  greedy[:, :out.shape[1]] = out

  np.savez(os.path.join(args.output, "reference.npz"),
           encoder_input_tokens=enc, decoder_input_tokens=dec, decoder_target_tokens=tgt,
           logits=logits.numpy().astype(np.float32),
           log_likelihood=log_likelihood.numpy().astype(np.float64),
           greedy_tokens=greedy)
  for name in sorted(os.listdir(args.output)):
    print(f"{name}: {os.path.getsize(os.path.join(args.output, name))} bytes")
  print("greedy:", greedy.tolist())


if __name__ == "__main__":
  main()
