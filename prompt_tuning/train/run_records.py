"""Files a run directory keeps so that eval, export and resume rebuild the run's model.

A model's delta plan may carry records (`DeltaPlan.records`: `(file name, JSON
text)` pairs), e.g. APET's `apet_selection.json`, the exact positions its
random selection chose. The trainer writes them to MODEL_DIR on the first host
before the first step, and a resume refuses to continue when the current
config would build something else (a changed selection algorithm, budget,
seed or backbone): the checkpoint's values would then sit at other positions.
"""
import json
from typing import Any, Sequence, Tuple

import numpy as np

from prompt_tuning import fs, multihost
from prompt_tuning.errors import UserError
from prompt_tuning.run_dir import RunDir

Records = Sequence[Tuple[str, str]]


def model_records(model: Any) -> Tuple[Tuple[str, str], ...]:
  """The `(file name, JSON text)` records of `model`'s delta plan (empty without one)."""
  return tuple(getattr(getattr(model, "deltas", None), "records", ()) or ())


def _first_difference(saved: Any, current: Any) -> str:
  if isinstance(saved, dict) and isinstance(current, dict):
    for key in sorted(set(saved) | set(current)):
      if saved.get(key) != current.get(key):
        a, b = json.dumps(saved.get(key)), json.dumps(current.get(key))
        if len(a) + len(b) > 120:
          return f"its {key!r} differs"
        return f"{key} was {a}, now {b}"
  return "the contents differ"


def check_records(run: RunDir, records: Records) -> None:
  """Refuses a resume whose model would be built differently from the recorded one.

  Raises:
    UserError: naming the file, the first differing field and the ways out.
  """
  for name, text in records:
    path = run.record(name)
    if not fs.exists(path):
      continue
    raw = fs.read_bytes(path).decode()
    try:
      saved = json.loads(raw)
    except ValueError:
      raise UserError(f"{path} is not valid JSON; restore it from a copy of the run or use a "
                      "new MODEL_DIR") from None
    if saved != json.loads(text):
      hint = (f" or --gin.APET_SELECTION_FILE=\"'{path}'\"" if name == "apet_selection.json"
              else "")
      raise UserError(f"{path} differs from what this config builds: "
                      f"{_first_difference(saved, json.loads(text))}; resume with the run's "
                      f"original config{hint} or use a new MODEL_DIR")


def write_records(run: RunDir, records: Records) -> None:
  """Writes each record to MODEL_DIR on the first host (unless it holds the same JSON).

  Every host builds its model, and so its records, on its own: they must agree
  (e.g. APET's selection), which is checked here (a UserError naming the hosts).
  """
  multihost.check_same_on_hosts("the run's records (" + ", ".join(n for n, _ in records) + ")",
                                *[np.frombuffer(t.encode(), np.uint8) for _, t in records])
  for name, text in records:
    path = run.record(name)
    if fs.exists(path):
      try:
        if json.loads(fs.read_bytes(path).decode()) == json.loads(text):
          continue
      except ValueError:
        pass
    fs.write_on_first_host(path, lambda f, text=text: f.write(text.encode()))
