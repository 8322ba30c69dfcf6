"""The rerun check compares the saved operative config with the current one, as gin applies it."""
import gin

from prompt_tuning.train.config_check import config_differences


@gin.configurable("config_check_probe")
def probe(value=1, other=0):
  return value + other


def test_a_binding_recorded_under_a_macro_scope_matches_the_unscoped_binding():
  # `TASKS = @config_check_probe()` calls the probe while TASKS is evaluated, so the saved
  # operative config records its parameter as TASKS/config_check_probe.value.
  gin.parse_config(["config_check_probe.value = 3", "TASKS = @config_check_probe()"])
  assert config_differences("TASKS/config_check_probe.value = 3\n") == []
  changed = config_differences("TASKS/config_check_probe.value = 4\n")
  assert changed == ["TASKS/config_check_probe.value was 4, now 3"]


def test_the_most_specific_scope_wins_and_unset_bindings_compare_to_defaults():
  gin.parse_config(["config_check_probe.value = 3", "outer/config_check_probe.value = 5"])
  assert config_differences("outer/inner/config_check_probe.value = 5\n") == []
  assert config_differences("config_check_probe.other = 0\n") == []  # the signature default
  assert config_differences("config_check_probe.other = 2\n") == [
      "config_check_probe.other was 2, now 0"]


def _parse_toy_run(*files, extra=()):
  from prompt_tuning import configurables
  from tests.train_helpers import TOY_BINDINGS, TOY_FILES
  configurables.parse([*TOY_FILES, *files], [*TOY_BINDINGS, "MODEL_DIR = '/tmp/unused'", *extra])


def test_runs_recorded_before_bucketing_was_the_default_resume_under_it():
  # A run's config.gin from before: the trainer recorded its default `length_buckets = None`.
  before = "train.length_buckets = None\ntrain.batch_size = 8\n"
  _parse_toy_run()  # now: train.length_buckets = @LengthBuckets() ('auto', window 1)
  assert config_differences(before) == []
  assert config_differences("train.batch_size = 8\n") == []  # older still: no binding at all
  # Window 1 computes the fixed-shape batches; a window other batches, in either direction.
  _parse_toy_run("runs/length_buckets.gin", extra=["BUCKET_WINDOW = 8"])
  assert config_differences(before) == [
      "BUCKET_WINDOW (LengthBuckets.window) was 1, now 8 (1 also without bucketing)"]
  _parse_toy_run("runs/fixed_shapes.gin")
  windowed = ("train.length_buckets = @LengthBuckets()\nLengthBuckets.inputs = 'auto'\n"
              "LengthBuckets.window = %BUCKET_WINDOW\nBUCKET_WINDOW = 8\n")
  assert config_differences(windowed) == [
      "BUCKET_WINDOW (LengthBuckets.window) was 8, now 1 (1 also without bucketing)"]
  # Bucket lists only cut padding: changing them resumes.
  assert config_differences(windowed.replace("= 8", "= 1").replace("'auto'", "[64, 128]")) == []
