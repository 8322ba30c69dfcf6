"""Run checkpoints: checksums in `meta`, and resume past a damaged newest step."""
import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from prompt_tuning.errors import UserError
from prompt_tuning.run_dir import RunDir
from prompt_tuning.train.checkpoints import (STATE_CHECKSUMS, RunCheckpoints,
                                             export_prompt, prompt_problem)

CORRUPT_DIR = "checkpoints_corrupt"  # where docs and `RunDir.corrupt_checkpoint` set steps aside


def state(k: int):
  prompt = jnp.arange(128, dtype=jnp.float32).reshape(4, 32) * k
  return {"trainable": {"prompt": {"prompt": prompt}},
          "opt_state": {"count": jnp.asarray(k, jnp.int32), "v": jnp.full((4,), k, jnp.float32)}}


def abstract(tree):
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  return jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device),
                                tree)


def assert_state_is(restored, k):
  for got, want in zip(jax.tree_util.tree_leaves(restored), jax.tree_util.tree_leaves(state(k))):
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


@pytest.fixture(scope="module")
def two_steps(tmp_path_factory):
  """A run folder with intact checkpoints at steps 1 and 2."""
  model_dir = tmp_path_factory.mktemp("pristine") / "run"
  checkpoints = RunCheckpoints(str(model_dir))
  checkpoints.save(1, state(1), {"step": 1})
  checkpoints.save(2, state(2), {"step": 2})
  checkpoints.close()
  return model_dir


def copy_run(two_steps, tmp_path):
  model_dir = tmp_path / "run"
  shutil.copytree(two_steps, model_dir)
  return model_dir


def step_files(model_dir, step=2):
  root = model_dir / "checkpoints" / str(step)
  return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def damage(path, how):
  if how == "delete":
    path.unlink()
  elif how == "truncate":
    path.write_bytes(path.read_bytes()[:path.stat().st_size // 2])
  elif how == "empty":
    path.write_bytes(b"")
  elif how == "flip":  # one bit, two thirds into the file
    data = bytearray(path.read_bytes())
    data[len(data) * 2 // 3] ^= 0x10
    path.write_bytes(bytes(data))


def test_meta_records_a_checksum_of_every_state_array(two_steps):
  meta = json.loads((two_steps / "checkpoints" / "2" / "meta" / "metadata").read_text())
  assert meta["step"] == 2
  assert sorted(meta[STATE_CHECKSUMS]) == ["opt_state/count", "opt_state/v",
                                           "trainable/prompt/prompt"]
  restored, meta, step = RunCheckpoints(str(two_steps)).restore_latest(abstract(state(0)))
  assert step == 2 and meta["step"] == 2
  assert_state_is(restored, 2)


# The files of an Orbax step whose damage must never be resumed from: the
# step's own metadata, the arrays' metadata and the OCDBT manifest and data.
MUST_SET_ASIDE = ("meta/metadata", "state/manifest.ocdbt", "state/d/")
KINDS = ("truncate", "delete", "flip", "empty")


def test_every_damaged_file_resumes_from_an_intact_step(two_steps, tmp_path, capsys):
  files = step_files(two_steps)
  assert {"meta/metadata", "state/_METADATA", "state/manifest.ocdbt"} <= set(files), files
  assert any(f.startswith("state/d/") for f in files), files
  set_aside = []
  for name in files:
    for how in KINDS:
      case = tmp_path / f"{name.replace('/', '_')}-{how}"
      model_dir = copy_run(two_steps, case)
      damage(model_dir / "checkpoints" / "2" / name, how)
      checkpoints = RunCheckpoints(str(model_dir))
      restored, _, step = checkpoints.restore_latest(abstract(state(0)))
      # Whatever it resumed from is exactly what was saved (the checksums say so).
      assert_state_is(restored, step)
      corrupt = model_dir / CORRUPT_DIR
      aside = sorted(os.listdir(corrupt)) if corrupt.exists() else []
      if step == 1:
        set_aside.append((name, how))
        assert len(aside) == 1 and aside[0].startswith("2-"), (name, how, aside)
        assert not (model_dir / "checkpoints" / "2").exists()
        assert checkpoints.latest_step() == 1
        moved = model_dir / CORRUPT_DIR / aside[0]
        assert moved.is_dir() and (how == "delete" or (moved / name).exists())  # kept, not deleted
        lines = [l for l in capsys.readouterr().out.splitlines() if "is unusable" in l]
        assert len(lines) == 1 and "checkpoints/2" in lines[0]
        assert "resuming from step 1" in lines[0]
      else:
        assert step == 2 and aside == [], (name, how)
        assert not name.startswith(MUST_SET_ASIDE) and name != "meta/metadata", (name, how)
      # Training goes on: the next save and a fresh resume work.
      checkpoints.save(step + 1, state(step + 1), {"step": step + 1})
      checkpoints.close()
      again, _, latest = RunCheckpoints(str(model_dir)).restore_latest(abstract(state(0)))
      assert latest == step + 1
      assert_state_is(again, step + 1)
  for name in files:
    if name.startswith(MUST_SET_ASIDE):
      assert {(name, how) for how in KINDS} <= set(set_aside), name
  # JSON metadata that Orbax needs is checked before Orbax reads it.
  for how in ("truncate", "empty"):
    assert ("state/_METADATA", how) in set_aside


def test_a_checksum_mismatch_is_set_aside(two_steps, tmp_path, capsys):
  model_dir = copy_run(two_steps, tmp_path)
  meta_file = model_dir / "checkpoints" / "2" / "meta" / "metadata"
  meta = json.loads(meta_file.read_text())
  meta[STATE_CHECKSUMS]["trainable/prompt/prompt"]["sums"]["float32"] = "0" * 16
  meta_file.write_text(json.dumps(meta))
  restored, _, step = RunCheckpoints(str(model_dir)).restore_latest(abstract(state(0)))
  assert step == 1
  assert_state_is(restored, 1)
  out = capsys.readouterr().out
  assert "trainable/prompt/prompt does not match its checksum" in out
  assert len(os.listdir(model_dir / CORRUPT_DIR)) == 1


def test_no_intact_step_starts_from_scratch_and_keeps_every_step(two_steps, tmp_path, capsys):
  model_dir = copy_run(two_steps, tmp_path)
  for step in (1, 2):
    damage(model_dir / "checkpoints" / str(step) / "meta" / "metadata", "truncate")
  checkpoints = RunCheckpoints(str(model_dir))
  assert checkpoints.restore_latest(abstract(state(0))) is None
  assert checkpoints.latest_step() is None
  assert sorted(p.split("-")[0] for p in os.listdir(model_dir / CORRUPT_DIR)) == ["1", "2"]
  assert capsys.readouterr().out.count("starting from scratch") == 2


def test_checkpoints_of_another_model_are_an_error_not_corruption(two_steps, tmp_path):
  model_dir = copy_run(two_steps, tmp_path)
  other = state(0)
  other["trainable"]["prompt"]["prompt"] = jnp.zeros((6, 32), jnp.float32)  # PROMPT_LENGTH 4 -> 6
  with pytest.raises(UserError) as error:
    RunCheckpoints(str(model_dir)).restore_latest(abstract(other))
  message = str(error.value)
  assert "\n" not in message and "does not fit this model" in message
  assert ("trainable/prompt/prompt: checkpoint has ((4, 32), 'float32'), model expects ((6, 32)"
          in message)
  assert not (model_dir / CORRUPT_DIR).exists()
  assert sorted(os.listdir(model_dir / "checkpoints")) == ["1", "2"]


def test_checkpoints_without_checksums_still_restore(two_steps, tmp_path, caplog):
  model_dir = copy_run(two_steps, tmp_path)
  meta_file = model_dir / "checkpoints" / "2" / "meta" / "metadata"
  meta = json.loads(meta_file.read_text())
  del meta[STATE_CHECKSUMS]
  meta_file.write_text(json.dumps(meta))
  restored, _, step = RunCheckpoints(str(model_dir)).restore_latest(abstract(state(0)))
  assert step == 2
  assert_state_is(restored, 2)
  assert any("is not verified" in r.getMessage() for r in caplog.records)


def test_a_prompt_export_is_checked_against_its_value(tmp_path):
  prompt = np.ones((4, 8), np.float32)
  path = export_prompt(RunDir(tmp_path), "step_3", prompt)
  assert path.endswith("prompts/step_3.npy")
  np.testing.assert_array_equal(np.load(path), prompt)
  assert prompt_problem(path, prompt) is None
  assert "differ" in prompt_problem(path, prompt * 2)
  assert "shape" in prompt_problem(path, prompt[:3])
  with open(path, "rb+") as f:
    f.truncate(os.path.getsize(path) - 4)
  assert "damaged .npy" in prompt_problem(path, prompt)
