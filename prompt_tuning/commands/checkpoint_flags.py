"""The `--checkpoint` flags of the commands that load a backbone themselves (score, generate,
export): any checkpoint kind `io.sources` reads."""
import argparse

from prompt_tuning import checks


def add_checkpoint_arguments(parser: argparse.ArgumentParser, what: str) -> None:
  """`--checkpoint` (`what` it is, e.g. "the backbone it was tuned on") and, for a T5X
  checkpoint, `--relative_attention_max_distance`."""
  parser.add_argument("--checkpoint", required=True,
                      help=f"{what}: a folder written by `prompt-tuning convert`, a T5X "
                      "checkpoint_N folder or a Hugging Face T5 1.1 folder")
  parser.add_argument("--relative_attention_max_distance", type=checks.int_flag(1), default=None,
                      help="for a T5X --checkpoint, which does not store it (default 128, "
                      "T5 1.1's value)")
