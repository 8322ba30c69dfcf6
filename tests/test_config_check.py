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
