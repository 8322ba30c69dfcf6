"""Prompt attention masks: each visibility kind on a hand-checked case, and the default."""
import jax
import numpy as np
import pytest

from prompt_tuning.errors import UserError
from prompt_tuning.models.config import T5Config
from prompt_tuning.models.t5 import T5
from prompt_tuning.prompts import attention
from prompt_tuning.prompts.prompt import Prompt

# Prompt positions 0, 1; input positions 2, 3; position 4 is padding.
VALID = np.array([[True, True, True, True, False]])
P, I, X = "P", "I", "."  # rows: queries, columns: keys; X = not visible
CASES = {
    # Each kind on its own (plus the diagonal, always visible).
    (attention.INPUT_INPUT,): ["P....", ".P...", "..II.", "..II.", "....."],
    (attention.INPUT_PROMPT,): ["P....", ".P...", "PPI..", "PP.I.", "....."],
    (attention.PROMPT_INPUT,): ["P.II.", ".PII.", "..I..", "...I.", "....."],
    (attention.PROMPT_PROMPT,): ["PP...", "PP...", "..I..", "...I.", "....."],
    (attention.PROMPT_PROMPT_CAUSAL,): ["P....", "PP...", "..I..", "...I.", "....."],
    # The reference's default when prompts only prime the input.
    (attention.INPUT_INPUT, attention.INPUT_PROMPT, attention.PROMPT_PROMPT_CAUSAL):
        ["P....", "PP...", "PPII.", "PPII.", "....."],
}


def as_bool(rows):
  return np.array([[c != X for c in row] for row in rows])


@pytest.mark.parametrize("kinds", list(CASES))
def test_each_visibility_kind_on_a_hand_checked_case(kinds):
  mask = np.asarray(attention.prompt_attention_mask(VALID, 2, kinds))[0]
  want = as_bool(CASES[kinds])
  # The padded query (row 4) keeps seeing the valid keys, as without a mask.
  want[4] = mask[4]
  np.testing.assert_array_equal(mask[:4], want[:4])
  np.testing.assert_array_equal(mask[:, 4], False)


def test_full_visibility_is_todays_encoder():
  config = T5Config(vocab_size=32, emb_dim=8, num_heads=2, head_dim=4, mlp_dim=16,
                    num_encoder_layers=1, num_decoder_layers=1,
                    relative_attention_num_buckets=8, relative_attention_max_distance=16)
  tokens, decoder = np.array([[5, 6, 1, 0]]), np.array([[0, 3]])
  plain = T5(config, prompt=Prompt(length=2))
  variables = jax.jit(plain.init)(jax.random.PRNGKey(0), tokens, decoder)
  want = jax.jit(plain.apply)(variables, tokens, decoder)
  full = T5(config, prompt=Prompt(length=2, attention=attention.FULL))
  np.testing.assert_array_equal(jax.jit(full.apply)(variables, tokens, decoder), want)
  unprompted = T5(config, prompt=Prompt(length=2, attention=(attention.INPUT_INPUT,)))
  assert not np.allclose(jax.jit(unprompted.apply)(variables, tokens, decoder), want)


@pytest.mark.parametrize("kinds,match", [
    (["input->all"], "unknown kinds"),
    ("input->input", "list of kinds"),
    ([attention.PROMPT_PROMPT, attention.PROMPT_PROMPT_CAUSAL], "keep one")])
def test_bad_settings_are_one_line_errors(kinds, match):
  with pytest.raises(UserError, match=match):
    attention.check_visibility(kinds)
  with pytest.raises(UserError, match="prefix"):
    attention.check_visibility([attention.INPUT_INPUT], "suffix")
