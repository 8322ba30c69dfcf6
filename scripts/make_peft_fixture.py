"""Builds the PEFT prompt-tuning adapter fixture with PEFT's seq2seq default
(`num_transformer_submodules=2`: 2 x num_virtual_tokens rows), trained a few steps in PEFT
on the tiny Hugging Face T5 of `scripts/make_hf_fixture.py`.

It also checks what `prompt_tuning.io.peft` relies on: PEFT applies only the first
num_virtual_tokens rows (to the encoder input); the decoder half gets no gradient, stays
at its initial values and does not change the logits.

Needs torch, transformers<5 and peft, which are NOT part of the project's install: use the
PEFT venv (`make peft_venv`, or `python3 -m venv V && V/bin/pip install --find-links
/opt/wheels torch==2.13.0+cpu "transformers<5" peft`), then::

  .bench_venv/bin/python scripts/make_peft_fixture.py

Made with peft 0.22.0, transformers 4.57.6, torch 2.13.0. Writes `tests/fixtures/peft_t5_tiny/`:

  adapter_config.json, adapter_model.safetensors   PEFT's save_pretrained (safetensors)
  reference.npz   the inputs of `hf_t5_tiny/reference.npz` and what PEFT computes on them:
    logits          [B, Ld, V] float32, PEFT's forward with labels
    log_likelihood  [B] float64, sum of log p(target) over non-padding targets
    loss            [] float64, PEFT's mean cross-entropy over non-padding targets
    greedy_tokens   [B, N] int32, PEFT's generate() (greedy) without the start id
    prompt_length   [] int32, num_virtual_tokens

References are computed in float64 from the float32 weights on disk.
"""
import argparse
import json
import os

import numpy as np
import peft
import torch
import transformers

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HF_FIXTURE = os.path.join(REPO, "tests", "fixtures", "hf_t5_tiny")
SEED = 20261207
VIRTUAL_TOKENS = 3
TRAIN_STEPS = 5
GREEDY_STEPS = 8


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--output", default=os.path.join(REPO, "tests", "fixtures", "peft_t5_tiny"))
  args = parser.parse_args()
  torch.manual_seed(SEED)
  with np.load(os.path.join(HF_FIXTURE, "reference.npz"), allow_pickle=False) as ref:
    enc, tgt = ref["encoder_input_tokens"], ref["decoder_target_tokens"]
  base = transformers.T5ForConditionalGeneration.from_pretrained(HF_FIXTURE)
  # num_transformer_submodules is left out: PEFT's default for SEQ_2_SEQ_LM (2) is the point.
  config = peft.PromptTuningConfig(task_type=peft.TaskType.SEQ_2_SEQ_LM,
                                   num_virtual_tokens=VIRTUAL_TOKENS)
  model = peft.get_peft_model(base, config)
  assert model.peft_config["default"].num_transformer_submodules == 2
  enc_t = torch.from_numpy(enc).long()
  mask = (enc_t != 0).long()
  labels = torch.from_numpy(tgt).long().masked_fill(torch.from_numpy(tgt) == 0, -100)
  # A few steps in PEFT, so the adapter is a trained one, not PEFT's initialization.
  optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=0.3)
  rows = model.prompt_encoder["default"].embedding.weight
  assert rows.shape[0] == 2 * VIRTUAL_TOKENS
  initial = rows.detach().clone()
  model.train()
  for _ in range(TRAIN_STEPS):
    optimizer.zero_grad()
    model(input_ids=enc_t, attention_mask=mask, labels=labels).loss.backward()
    optimizer.step()
  model.eval()
  # Trained: the encoder half moved; the decoder half is untouched (PEFT never applies it).
  assert not torch.equal(rows[:VIRTUAL_TOKENS], initial[:VIRTUAL_TOKENS])
  assert torch.equal(rows[VIRTUAL_TOKENS:], initial[VIRTUAL_TOKENS:])
  with torch.no_grad():
    before = model(input_ids=enc_t, attention_mask=mask, labels=labels).logits
    rows[VIRTUAL_TOKENS:] += 3.0
    after = model(input_ids=enc_t, attention_mask=mask, labels=labels).logits
    rows[VIRTUAL_TOKENS:] -= 3.0
  assert torch.equal(before, after), "this PEFT applies the decoder half: update io/peft.py"
  model.save_pretrained(args.output, safe_serialization=True)
  os.remove(os.path.join(args.output, "README.md"))  # PEFT's model card template, not needed
  # The base model by its path in the repository, not this machine's absolute path.
  config_path = os.path.join(args.output, "adapter_config.json")
  with open(config_path) as f:
    adapter = json.load(f)
  adapter["base_model_name_or_path"] = "tests/fixtures/hf_t5_tiny"
  with open(config_path, "w") as f:
    json.dump(adapter, f, indent=2, sort_keys=True)

  model = peft.PeftModel.from_pretrained(
      transformers.T5ForConditionalGeneration.from_pretrained(HF_FIXTURE), args.output).eval()
  model = model.double()
  with torch.no_grad():
    out = model(input_ids=enc_t, attention_mask=mask, labels=labels)
    logits = out.logits
    assert logits.shape[1] == tgt.shape[1]  # no decoder prompt positions
    log_probs = torch.log_softmax(logits, dim=-1)
    token_ll = torch.gather(log_probs, -1, torch.from_numpy(tgt).long()[..., None])[..., 0]
    log_likelihood = (token_ll * torch.from_numpy(tgt != 0)).sum(-1)
    generated = model.generate(input_ids=enc_t, attention_mask=mask, do_sample=False,
                               num_beams=1, max_new_tokens=GREEDY_STEPS, min_new_tokens=0)
  greedy = np.zeros((len(enc), GREEDY_STEPS), np.int32)
  tokens = generated[:, 1:].numpy()  # drop the decoder start id
  greedy[:, :tokens.shape[1]] = tokens
  np.savez(os.path.join(args.output, "reference.npz"),
           logits=logits.numpy().astype(np.float32),
           log_likelihood=log_likelihood.numpy().astype(np.float64),
           loss=np.float64(out.loss.item()), greedy_tokens=greedy,
           prompt_length=np.int32(VIRTUAL_TOKENS))
  for name in sorted(os.listdir(args.output)):
    print(f"{name}: {os.path.getsize(os.path.join(args.output, name))} bytes")
  print("log_likelihood:", log_likelihood.tolist(), "loss:", out.loss.item())
  print("greedy:", greedy.tolist())


if __name__ == "__main__":
  main()
