"""Checks of gin flags and configurations, each failure one line naming the way out.

`--gin.KEY=VALUE` values gin cannot parse (a bare string without quotes, an
unbalanced bracket), bindings of unknown configurables or parameters (with the
closest real names), and macros set by a flag that nothing reads: a misspelled
`--gin.TRAIN_STEP=4` would otherwise be silently ignored.
"""
import inspect
import os
import re
import tokenize
from typing import Any, List, Mapping, Optional, Sequence, Set, Tuple

import gin
from gin import config_parser

from prompt_tuning.errors import UserError, closest


def one_line(error: Exception) -> str:
  lines = [l.strip() for l in str(error).splitlines() if l.strip()]
  where = next((l for l in lines if l.startswith("In file") or l.startswith("In bindings")), "")
  return f"{lines[0] if lines else type(error).__name__} {where}".strip()


PARSE_ERRORS = (ValueError, KeyError, SyntaxError, ImportError, IOError, TypeError,
                 tokenize.TokenError)
_MACRO_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# A value meant as a string: no brackets or quotes, so quoting it is all it lacks.
_BARE_WORD = re.compile(r"^[^()\[\]{}'\"]+$")


def _flag(binding: str) -> Tuple[str, str]:
  """`(key, value)` of a binding `KEY = VALUE`, both stripped."""
  key, _, value = binding.partition("=")
  return key.strip(), value.strip()


def _statements(text: str) -> List[Any]:
  """The parsed statements of gin text, without binding anything."""
  return list(config_parser.ConfigParser(text, gin.config.ParserDelegate(skip_unknown=True)))


def check_binding_syntax(bindings: Sequence[str]) -> None:
  """Names the first `--gin.KEY=VALUE` flag whose value gin cannot parse, and how to write it."""
  for binding in bindings:
    try:
      _statements(binding)
    except (SyntaxError, tokenize.TokenError, ValueError) as e:
      key, value = _flag(binding)
      if value and _BARE_WORD.match(value) and not value.startswith(("@", "%")):
        raise UserError(f"--gin.{key}={value} is not a gin value: strings need quotes, e.g. "
                        f"--gin.{key}=\"{value!r}\"") from None
      reason = e.args[0] if isinstance(e, tokenize.TokenError) else one_line(e).split(" (line")[0]
      if "EOF in multi-line" in str(reason):
        reason = "unbalanced brackets"
      raise UserError(f"--gin.{key}={value} is not a gin value ({reason}); write a Python "
                      "literal, %MACRO or @configurable(), e.g. --gin.TRAIN_STEPS=1000 or "
                      "--gin.MODEL_DIR=\"'/tmp/run'\"") from None


def _configurable_parameters(name: str) -> List[str]:
  """Parameter names of the registered configurable `name` ([] when unknown)."""
  try:
    fn = gin.config._REGISTRY.get_match(name).wrapped  # pylint: disable=protected-access
  except (AttributeError, KeyError, ValueError):
    return []
  if inspect.isclass(fn):
    fn = gin.config._find_class_construction_fn(fn)  # pylint: disable=protected-access
  try:
    parameters = inspect.signature(inspect.unwrap(fn)).parameters
  except (TypeError, ValueError):
    return []
  return [p for p in parameters if p not in ("self", "parent")]  # flax's `parent` is not bindable


def _configurable_names() -> Set[str]:
  """Every registered configurable, by its short name and by its full selector."""
  names = set()
  for selector, _ in gin.config._REGISTRY.items():  # pylint: disable=protected-access
    names.update((selector, selector.rsplit(".", 1)[-1]))
  return names


def _binding_of_line(error: Exception, bindings: Sequence[str]) -> Optional[str]:
  """The binding that gin's 'In bindings string line N' points at."""
  match = re.search(r"In bindings string line (\d+)", str(error))
  if not match:
    return None
  line = int(match.group(1))
  for binding in bindings:
    if line <= binding.count("\n") + 1:
      return binding
    line -= binding.count("\n") + 1
  return None


def explain(error: Exception, bindings: Sequence[str]) -> str:
  """One line saying what gin refused, where, and the closest real names."""
  text = str(error)
  binding = _binding_of_line(error, bindings)
  if binding:
    where = "--gin.{}={}".format(*_flag(binding))
  else:  # "In file 'x.gin', line 3" when gin says so
    where = next((l.strip() for l in text.splitlines() if l.strip().startswith("In file")), "")
  unknown_parameter = re.search(r"Configurable '([\w.]+)' doesn't have a parameter named '(\w+)'",
                                text)
  if unknown_parameter:
    name, parameter = unknown_parameter.groups()
    return (f"{where or 'gin'}: {name} has no parameter {parameter!r}."
            f"{closest(parameter, _configurable_parameters(name))} Fix the binding")
  unknown_configurable = re.search(r"No configurable matching (?:reference '@)?'?([\w.]+)", text)
  if unknown_configurable:
    name = unknown_configurable.group(1)
    return (f"{where or 'gin'}: no configurable named {name!r}.{closest(name, _configurable_names())}"
            " Fix the binding, or import the module defining it")
  return f"bad gin configuration: {one_line(error)}; fix the gin file or --gin.* binding"


def _macro_references(value: Any, found: Set[str]) -> None:
  """Adds the names of the `%MACRO`s inside a bound value (containers included)."""
  if isinstance(value, gin.config.ConfigurableReference):
    if str(value).startswith("%"):
      found.add(str(value)[1:])
  elif isinstance(value, dict):
    for item in value.items():
      _macro_references(item, found)
  elif isinstance(value, (list, tuple, set, frozenset)):
    for item in value:
      _macro_references(item, found)


def referenced_macros() -> Set[str]:
  """Names of the macros that some binding or macro of the parsed configuration reads."""
  found: Set[str] = set()
  for params in list(gin.config._CONFIG.values()):  # pylint: disable=protected-access
    for value in params.values():
      _macro_references(value, found)
  return found


def check_flag_macros(bindings: Sequence[str], configs_dir: str,
                      read_elsewhere: Sequence[str] = (),
                      set_by_t5x: Optional[Mapping[str, str]] = None) -> None:
  """Refuses a macro set by a flag that no binding reads (e.g. `TRAIN_STEP` for `TRAIN_STEPS`),
  and a `%MACRO` read by a flag that nothing defines.

  Only macros of `bindings` are checked: gin files legitimately define macros
  that a given run does not read (`DATA_DIR`, a method's settings). `set_by_t5x` maps our
  parameters that a T5X name set (`t5x_settings.apply`) to that name: a macro whose reader
  it replaced is named with it.
  """
  referenced = referenced_macros() | set(read_elsewhere)  # e.g. T5X's names, read as aliases
  defined = {name for name, selector in gin.config._CONFIG if selector == "gin.macro"}  # pylint: disable=protected-access
  for binding in bindings:
    key, value = _flag(binding)
    used: Set[str] = set()
    for statement in _statements(binding):
      _macro_references(getattr(statement, "value", None), used)
    undefined = sorted(used - defined)
    if undefined:
      name = undefined[0]
      raise UserError(f"--gin.{key}={value} reads macro %{name}, which no gin file or flag "
                      f"defines.{closest(name, defined, n=3)} Fix the name or set --gin.{name}=VALUE")
  for binding in bindings:
    key, value = _flag(binding)
    if _MACRO_NAME.match(key) and key not in referenced:
      readers = _package_files_reading(key, configs_dir)
      replaced = _replaced_readers(key, readers, configs_dir, bindings, set_by_t5x or {})
      if replaced:
        param, by = replaced
        raise UserError(f"--gin.{key}={value} sets macro {key}, but {param}, which reads it, is "
                        f"set by {by}, so {key} would be ignored: set only one of them")
      if readers:
        hint = (f" It is read by {', '.join(readers[:3])}: add --gin_file={readers[0]} (or "
                "check the name)")
      else:
        hint = closest(key, referenced, n=3) or " Check the name against the gin files"
      raise UserError(f"--gin.{key}={value} sets macro {key}, which nothing in the parsed gin "
                      f"files reads, so it would be ignored.{hint}")


def _replaced_readers(macro: str, readers: Sequence[str], configs_dir: str,
                      bindings: Sequence[str],
                      set_by_t5x: Mapping[str, str]) -> Optional[Tuple[str, str]]:
  """`(parameter, what set it)` for a parameter that reads `%macro` in one of `readers` (the
  package's gin files) but that a flag or a T5X name set instead, if any."""
  flags = {_flag(b)[0]: b for b in bindings}
  for reader in readers:
    with open(os.path.join(configs_dir, reader), encoding="utf-8") as f:
      text = f.read()
    try:
      statements = _statements(text)
    except (SyntaxError, ValueError, tokenize.TokenError):
      continue
    for statement in statements:
      used: Set[str] = set()
      _macro_references(getattr(statement, "value", None), used)
      selector, arg = getattr(statement, "selector", None), getattr(statement, "arg_name", None)
      if macro not in used or not selector or not arg:
        continue
      scope = getattr(statement, "scope", "")
      param = f"{scope + '/' if scope else ''}{selector}.{arg}"
      if param in set_by_t5x:
        return param, set_by_t5x[param]
      if param in flags:
        return param, "--gin.{}={}".format(*_flag(flags[param]))
  return None


def _package_files_reading(macro: str, root: str) -> List[str]:
  """The package's gin files (relative to `root`, its configs/) that read `%macro`."""
  pattern = re.compile(r"%" + re.escape(macro) + r"\b")
  found = []
  for folder, _, files in sorted(os.walk(root)):
    for name in sorted(files):
      if name.endswith(".gin"):
        path = os.path.join(folder, name)
        with open(path, encoding="utf-8") as f:
          if pattern.search(f.read()):
            found.append(os.path.relpath(path, root))
  return found
