"""Issue 28, class 3: the files a run writes beside its checkpoints are as safe as them.

- `MODEL_DIR/config.gin` ends in a checksum line (`fs.write_checked_text`) and a rerun reads
  it back verified: however it is damaged, the rerun is one `error:` line naming it, and the run
  folder is left as it was. So are the run's records that no checkpoint can rebuild
  (`best/trainable.npz`, `prompts/best.json`, `train_summary.json`).
- The exports a checkpoint can rebuild (`prompts/step_N.npy`, `prompts/best.npy`,
  `exports/<step_N | best>/`) are checked on resume: a damaged one is moved to `damaged/<time>/`
  and written again, equal to the checkpoint's prompt; a missing one is written.
- A write that fails (a file-size limit standing in for a full disk, a folder nothing can be
  written in) is one line naming the path, and no temporary file or folder is left.
"""
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

from tests.reliability_helpers import (HF_FIXTURE, NOT_WRITABLE, REPO, exit_code, one_error_line,
                                       run_cli, snapshot, train)

# A run that evaluates at its last step, so that it has `best` exports too.
WITH_BEST = ("--gin.EVAL_PERIOD=2", "--gin.train.early_stopping_metric='accuracy'")


def _train(model_dir, steps=2, *flags):
  """The argv of the finished run's (re)run in `model_dir`."""
  return train(*WITH_BEST, *flags, model_dir=str(model_dir), steps=steps)(None)


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> pathlib.Path:
  """A finished 2-step toy run with a checkpoint, step and best exports; tests change copies."""
  run = tmp_path_factory.mktemp("run_files") / "run"
  assert exit_code(_train(run)) == 0
  for name in ("config.gin", "prompts/step_2.npy", "prompts/best.npy", "prompts/best.json",
               "best/trainable.npz", "exports/step_2/deltas.safetensors",
               "exports/best/deltas.safetensors", "train_summary.json"):
    assert (run / name).is_file(), name
  return run


def _copy(finished, tmp_path) -> pathlib.Path:
  return pathlib.Path(shutil.copytree(finished, tmp_path / "run"))


def _checkpoint_prompt(run: pathlib.Path) -> np.ndarray:
  """The prompt in the Orbax checkpoint of step 2, read with Orbax itself."""
  import orbax.checkpoint as ocp
  state = ocp.StandardCheckpointer().restore(run / "checkpoints" / "2" / "state")
  return np.asarray(state["trainable"]["prompt"]["prompt"])


def _flip(data: bytes, index: int) -> bytes:
  return data[:index] + bytes([data[index] ^ 0x01]) + data[index + 1:]


# ---- records no checkpoint can rebuild: refused in one line naming them --------------------

def _lines(data: bytes):
  return data.splitlines(keepends=True)


CONFIG_DAMAGES = {
    "cut_in_half": lambda b: b[:len(b) // 2],
    "emptied": lambda b: b"",
    "cut_in_its_first_line": lambda b: b[:20],
    "cut_in_its_checksum": lambda b: b[:-20],
    "a_byte_flipped_in_a_binding": lambda b: _flip(b, b.index(b"TRAIN_STEPS") + 2),
    "a_byte_flipped_in_the_header": lambda b: _flip(b, 5),
    "not_utf8": lambda b: b.replace(b"TRAIN_STEPS", b"TRAIN_\xffTEPS", 1),
    "checksum_line_removed": lambda b: b"".join(_lines(b)[:-1]),
    "checksum_edited": lambda b: b"".join(_lines(b)[:-1]) + _lines(b)[-1][:-5] + b"0000\n",
    "header_removed": lambda b: b"".join(_lines(b)[1:]),
    "a_binding_removed": lambda b: b"".join(l for l in _lines(b) if b"TRAIN_STEPS" not in l),
    "a_binding_edited": lambda b: b.replace(b"TRAIN_STEPS = 2", b"TRAIN_STEPS = 3"),
}
RECORD_DAMAGES = {  # (file, damage)
    "best_trainable_garbage": ("best/trainable.npz",
                               lambda b: np.random.default_rng(0).bytes(len(b))),
    "best_record_cut": ("prompts/best.json", lambda b: b[:len(b) // 2]),
    "train_summary_not_json": ("train_summary.json", lambda b: b"\0" * len(b)),
}
REFUSED = ([(f"config_{name}", "config.gin", damage) for name, damage in CONFIG_DAMAGES.items()]
           + [(name, *case) for name, case in RECORD_DAMAGES.items()])


@pytest.mark.parametrize("name, damaged, damage", REFUSED, ids=[c[0] for c in REFUSED])
def test_a_damaged_run_record_is_refused_in_one_line_naming_it(finished, tmp_path, name, damaged,
                                                               damage, capsys):
  run = _copy(finished, tmp_path)
  path = run / damaged
  path.write_bytes(damage(path.read_bytes()))
  before = snapshot(run)
  code, err = run_cli(_train(run), capsys)
  one_error_line(code, err, (str(path), "damaged"), ("Traceback", "TokenError"))
  assert snapshot(run) == before


def test_a_config_gin_moved_away_is_written_again_as_its_error_says(finished, tmp_path, capsys):
  from prompt_tuning import fs
  run = _copy(finished, tmp_path)
  (run / "config.gin").unlink()
  code, err = run_cli(_train(run, steps=4), capsys)  # TRAIN_STEPS changes no result
  assert code in (0, None), err[-3000:]
  assert "TRAIN_STEPS = 4" in fs.read_checked_text(str(run / "config.gin"))


# ---- exports a checkpoint rebuilds: set aside and written again -----------------------------

REBUILT = ("prompts/step_2.npy", "prompts/best.npy", "exports/step_2/deltas.safetensors",
           "exports/best/deltas.safetensors")


def _claim_a_billion_rows(data: bytes) -> bytes:
  """The header's shape (a .npy's `(4, 32)`, a safetensors' `[4,32]`) made (10**9, 32)."""
  data = re.sub(rb"\(4, 32\)", b"(1000000000, 32)", data, count=1)
  return re.sub(rb"\[4,32\]", b"[1000000000,32]", data, count=1)


EXPORT_DAMAGES = {
    "cut_in_half": lambda b: b[:len(b) // 2],
    "emptied": lambda b: b"",
    "random_bytes": lambda b: np.random.default_rng(1).bytes(len(b)),
    "header_claims_a_billion_rows": _claim_a_billion_rows,
    "last_value_changed": lambda b: b[:-1] + bytes([b[-1] ^ 0x40]),  # a valid file, other values
    "one_byte_appended": lambda b: b + b"\0",
    "deleted": None,
}


# Each rerun damages the four files with four of the damages, in turn: four reruns try each
# damage on two or more of the files (a deleted, a cut and a random-bytes .npy among them).
RERUNS = [[list(EXPORT_DAMAGES)[(3 * k + j) % len(EXPORT_DAMAGES)] for j in range(len(REBUILT))]
          for k in range(4)]


@pytest.mark.parametrize("damages", RERUNS, ids=["-".join(d) for d in RERUNS])
def test_a_damaged_export_is_set_aside_and_rebuilt_from_the_checkpoint(finished, tmp_path, damages,
                                                                        capsys):
  from prompt_tuning.train.checkpoints import load_tree
  from prompt_tuning.train.exports import read_export
  run = _copy(finished, tmp_path)
  damaged = {}  # file -> its damaged bytes (deleted files are not set aside)
  for name, damage in zip(REBUILT, damages):
    if EXPORT_DAMAGES[damage] is None:
      (run / name).unlink()
    else:
      damaged[name] = EXPORT_DAMAGES[damage]((run / name).read_bytes())
      (run / name).write_bytes(damaged[name])
  checkpoints = snapshot(run / "checkpoints")
  code, output = run_cli(_train(run), capsys, stdout=True)
  assert code in (0, None), output[-3000:]
  assert snapshot(run / "checkpoints") == checkpoints
  expected = {"step_2": _checkpoint_prompt(run),
              "best": load_tree(str(run / "best" / "trainable.npz"))["prompt"]["prompt"]}
  np.testing.assert_array_equal(expected["step_2"], np.load(finished / "prompts" / "step_2.npy"))
  for name, prompt in expected.items():
    np.testing.assert_array_equal(np.load(run / "prompts" / f"{name}.npy"), prompt)
    tensors, _ = read_export(str(run / "exports" / name))
    np.testing.assert_array_equal(tensors["params/prompt/prompt"], prompt)
  # One line for each file set aside: every damaged file, kept byte for byte under
  # damaged/<time>/, and an export folder that lost its tensors (set aside whole). A missing
  # prompt is only written again.
  for name, data in damaged.items():
    (copy,) = (run / "damaged").glob(f"*/{name}")
    assert copy.read_bytes() == data
  set_aside = [name for name, damage in zip(REBUILT, damages)
               if name.startswith("exports/") or damage != "deleted"]
  warnings = [l for l in output.splitlines() if l.startswith("warning:") and "damaged" in l]
  assert len(warnings) == len(set_aside), output[-3000:]
  for name in set_aside:
    shown = str(run / (name if name.startswith("prompts/") else os.path.dirname(name)))
    assert any(w.startswith(f"warning: {shown} is damaged") for w in warnings), (shown, warnings)


# ---- failed writes: one line naming the path, nothing temporary left ------------------------

_UNDER_A_FILE_SIZE_LIMIT = r"""
import contextlib, io, json, resource, sys
sys.path.insert(0, {repo!r})
import gin
from prompt_tuning import cli
results = []
for limit, argv in json.loads(sys.argv[1]):
  soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
  output = io.StringIO()
  with contextlib.redirect_stdout(output), contextlib.redirect_stderr(output):
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit or hard, hard))  # Python ignores SIGXFSZ
    try:
      cli.main(argv)
      code = 0
    except SystemExit as e:
      code = e.code
    finally:
      resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
  gin.clear_config()
  results.append([code, output.getvalue()])
print("RESULT" + json.dumps(results))
"""


def _under_file_size_limits(cases):
  """Runs each (limit in bytes or None, argv) in one subprocess, every file it writes limited to
  `limit` bytes as by `ulimit -f` (writes past it fail with EFBIG, as on a full disk); the
  (exit code, output) of each."""
  proc = subprocess.run(
      [sys.executable, "-c", _UNDER_A_FILE_SIZE_LIMIT.format(repo=str(REPO)),
       json.dumps([[limit, [str(a) for a in argv]] for limit, argv in cases])],
      capture_output=True, text=True, timeout=900,
      env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
  assert proc.returncode == 0 and "RESULT" in proc.stdout, proc.stderr[-3000:]
  return json.loads(proc.stdout.split("RESULT")[-1])


def _temporary_files(root: pathlib.Path):
  """What a failed write may have left under `root`: `*.tmp` files, Orbax's temporary step
  folders, hidden staging folders."""
  found = []
  for folder, folders, files in os.walk(root):
    for name in folders + files:
      if name.endswith(".tmp") or "tmp" in name.split(".")[-1] or (
          name.startswith(".") and name != ".lock"):
        found.append(os.path.join(folder, name))
  return found


@pytest.mark.slow
def test_a_failed_write_names_the_path_and_leaves_nothing_temporary(finished, tmp_path):
  backbone, prompt = tmp_path / "backbone", tmp_path / "prompt.npy"
  np.save(prompt, np.ones((3, 32), np.float32))
  resumed = _copy(finished, tmp_path)
  (resumed / "prompts" / "step_2.npy").write_bytes(b"\x93NUMPY")  # rebuilt on resume
  # Limits between the sizes of the run's files: config.gin is written first, then the loss
  # record and events (smaller), then the evaluation's T5X files, whose predictions file is
  # larger (one evaluated example keeps it small), then the checkpoint, whose largest file is
  # larger.
  config = (finished / "config.gin").stat().st_size
  largest = max(p.stat().st_size for p in (finished / "checkpoints").rglob("*") if p.is_file())
  predictions = finished / "inference_eval" / "toy_parity-000002.jsonl"
  assert config < largest and config < predictions.stat().st_size
  one_example = "--gin.train.eval_num_examples=1"
  prompt_size = (finished / "prompts" / "step_2.npy").stat().st_size
  convert = ["convert", "--from", "hf", "--input", HF_FIXTURE]
  # (limit, argv, the path the line names, the folder that must hold nothing temporary)
  cases = [
      (None, [*convert, "--output", backbone], None, tmp_path),
      (config // 2, _train(tmp_path / "a"), tmp_path / "a" / "config.gin", tmp_path / "a"),
      ((config + largest) // 2, _train(tmp_path / "b", 2, one_example),
       tmp_path / "b" / "checkpoints" / "2", tmp_path / "b"),
      ((config + predictions.stat().st_size) // 2, _train(tmp_path / "e"),
       tmp_path / "e" / "inference_eval" / predictions.name, tmp_path / "e"),
      (prompt_size - 1, _train(resumed), resumed / "prompts" / "step_2.npy", resumed),
      (300, ["export", "--prompt", prompt, "--checkpoint", backbone, "--output", tmp_path / "c"],
       tmp_path / "c", tmp_path),
      (4096, [*convert, "--output", tmp_path / "d"], tmp_path / "d", tmp_path),
      (None, ["export", "--prompt", prompt, "--checkpoint", backbone, "--output",
              f"{NOT_WRITABLE}/adapter"], NOT_WRITABLE, tmp_path),
  ]
  results = _under_file_size_limits([(limit, argv) for limit, argv, *_ in cases])
  assert results[0][0] in (0, None), results[0][1][-3000:]
  for (limit, argv, named, folder), (code, output) in zip(cases[1:], results[1:]):
    line = one_error_line(code, output, (str(named),))
    assert "Traceback" not in output, output[-3000:]
    assert not _temporary_files(folder), (argv[0], limit, line, _temporary_files(folder))
  # A failed fresh run leaves no folder; the resumed one keeps its damaged prompt aside and
  # rebuilds it when rerun with room.
  assert not (tmp_path / "a").exists()
  assert not (tmp_path / "c").exists() and not (tmp_path / "d").exists()
  assert exit_code(_train(resumed)) in (0, None)
  np.testing.assert_array_equal(np.load(resumed / "prompts" / "step_2.npy"),
                                _checkpoint_prompt(resumed))


def test_a_failed_writes_late_files_are_removed_too(tmp_path):
  # A failed Orbax write returns before tensorstore's other writes of it land; they recreate
  # the folder afterwards (seen with `convert` under a file-size limit).
  import threading  # pylint: disable=g-import-not-at-top
  from prompt_tuning import fs  # pylint: disable=g-import-not-at-top
  staging = tmp_path / ".out.converting-x" / "out" / "params.orbax-checkpoint-tmp"
  staging.mkdir(parents=True)
  late = threading.Timer(0.3, lambda: (staging.mkdir(parents=True, exist_ok=True),
                                       (staging / "chunk").write_bytes(b"0" * 10)))
  late.start()
  fs.remove_failed_write(str(tmp_path / ".out.converting-x"))
  late.join()
  assert not (tmp_path / ".out.converting-x").exists()
