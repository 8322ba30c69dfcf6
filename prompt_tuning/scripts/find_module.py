"""`python -m prompt_tuning.scripts.find_module MODULE`: the folder a module is installed in.

As in the reference code, the scripts build `--gin_search_paths` from it:

    PROMPT_DIR="`python -m prompt_tuning.scripts.find_module prompt_tuning`/.."
    prompt-tuning train --gin_search_paths="${PROMPT_DIR}" \
      --gin_file=prompt_tuning/configs/models/t5_1_1_base_prompt.gin ...

Prints the folder of the module's file (of a package: the package folder;
of a namespace package: its first folder). A module that is not installed is
one line on stderr and exit status 1; `t5x` and `flaxformer`, which the
reference scripts also look up, are not needed here (prompt-tuning replaces
them) and the line says so.
"""
import importlib
import importlib.util
import os
import sys
from typing import Optional, Sequence

# Looked up by the reference scripts for their gin files; prompt-tuning needs neither.
REPLACED = ("t5x", "flaxformer")


def module_folder(name: str) -> Optional[str]:
  """The folder of installed module `name`, or None when it is not installed."""
  try:
    spec = importlib.util.find_spec(name)
  except (ImportError, ValueError):
    return None
  if spec is None:
    return None
  if spec.origin and spec.origin not in ("namespace", "built-in", "frozen"):
    return os.path.dirname(os.path.abspath(spec.origin))
  locations = list(spec.submodule_search_locations or [])
  return os.path.abspath(locations[0]) if locations else None


def main(argv: Optional[Sequence[str]] = None) -> int:
  argv = list(sys.argv[1:] if argv is None else argv)
  if len(argv) != 1 or argv[0].startswith("-"):
    print("usage: python -m prompt_tuning.scripts.find_module MODULE  (e.g. prompt_tuning)",
          file=sys.stderr)
    return 2
  name = argv[0]
  folder = module_folder(name)
  if folder is None:
    if name.split(".")[0] in REPLACED:
      print(f"note: {name} is not installed; prompt-tuning does not need it (its gin files ship "
            "in prompt_tuning/configs)", file=sys.stderr)
    else:
      print(f"error: module {name} is not installed; check the name or install it",
            file=sys.stderr)
    return 1
  print(folder)
  return 0


if __name__ == "__main__":
  sys.exit(main())
