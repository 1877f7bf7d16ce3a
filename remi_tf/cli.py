"""Command-line plumbing shared by the pipelines: how much TensorFlow logs,
run settings from a `--config` file, and what to run after training.

TensorFlow's C++ code writes to stderr through two loggers: its own, whose
threshold `TF_CPP_MIN_LOG_LEVEL` is read once, when TensorFlow loads, and
Abseil's (e.g. Grappler's "Error in PredictCost()" warnings), which ignores
that variable (tensorflow/tensorflow#100442). On a CPU-only machine a plain
run prints a CUDA `cuInit` error and such warnings before its answer. So
`import remi_tf` defaults the variable to 3 (fatal only; a value the user set
is kept), and `configure_logging` -- which each pipeline calls before
anything imports TensorFlow -- applies the same threshold to Abseil's logger
and quiets TensorFlow's Python-side warnings, or, given `--verbose`, shows
everything.
"""

import argparse
import ctypes
import json
import logging
import os
import resource
import shlex
import sys
import typing
from typing import Optional, Sequence

import numpy as np

from remi_tf import config, layout

VERBOSE_HELP = ("show TensorFlow's log messages (C++ and Python), hidden by "
                "default")
# absl::SetMinLogLevel(absl::LogSeverityAtLeast) of the Abseil release built
# into TensorFlow 2.20's libtensorflow_framework; its severities 0..3 (info,
# warning, error, fatal) are TF_CPP_MIN_LOG_LEVEL's.
_ABSL_SET_MIN_LOG_LEVEL = (
    "_ZN4absl12lts_2025012714SetMinLogLevelENS0_18LogSeverityAtLeastE")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def add_dataset_flags(parser: argparse.ArgumentParser,
                      required: bool = True) -> None:
  """Adds `--dataset` and `--raw-file`, as every pipeline that reads a
  dataset takes them; `required=False` where a `--config` file may name the
  dataset instead (`run_settings` then requires it)."""
  parser.add_argument("--dataset", required=required,
                      choices=sorted(config.DATASET_DEFAULTS),
                      help=None if required else "required unless the "
                      "--config file names it")
  parser.add_argument("--raw-file", help="local copy of the raw file "
                      "(default: the packaged sample or a download)")


def add_cache_flag(parser: argparse.ArgumentParser) -> None:
  """Adds `--cache-dir`, where downloads and preprocessed data are kept."""
  parser.add_argument("--cache-dir", help="downloads and preprocessed data "
                      "(default $REMI_TF_HOME or ~/.cache/remi-tf)")


def _threads(value: str) -> int:
  """argparse type of a thread count: an int >= 0."""
  try:
    count = int(value)
  except ValueError:
    count = -1
  if count < 0:
    raise argparse.ArgumentTypeError(f"must be an integer >= 0, got {value!r}")
  return count


def add_thread_flags(parser: argparse.ArgumentParser) -> None:
  """Adds `--inter-op-threads` and `--intra-op-threads`, TensorFlow's CPU
  thread pools for training (`remi_tf.threads.configure`)."""
  for name, what in (("inter", "ops run at once"),
                     ("intra", "threads of each op")):
    parser.add_argument(
        f"--{name}-op-threads", type=_threads, metavar="N",
        help=f"TensorFlow's {what} (default: two ops at once, sharing the "
        "cores; 0: TensorFlow's own default)")


def add_verbose_flag(parser: argparse.ArgumentParser) -> None:
  """Adds `--verbose` (read earlier by `configure_logging`) to a parser, so
  that it is accepted and listed in `--help`."""
  parser.add_argument("--verbose", action="store_true", help=VERBOSE_HELP)


# The settings a --config file may hold, with their types: a run's
# configuration, named as train.py's flags with underscores (`rr_lambda` for
# `--rr-lambda`). The cutoffs and the selection metric are the paper's, not
# settings.
SETTING_TYPES = {
    "dataset": str, "raw_file": str, "threshold": int,
    **{name: hint for name, hint in {
        **typing.get_type_hints(config.ModelConfig),
        **typing.get_type_hints(config.TrainConfig)}.items()
       if name not in ("topn", "selection_metric")},
}


def add_config_flag(parser: argparse.ArgumentParser, help_text: str) -> None:
  """Adds `--config FILE`, a JSON object of run settings (`read_settings`)."""
  parser.add_argument("--config", metavar="FILE", help=help_text)


def read_settings(path: str) -> dict:
  """The run settings of a --config file: a JSON object whose keys are
  `SETTING_TYPES` (train.py's flags with underscores), e.g.
  {"dataset": "csv", "raw_file": "log.csv.gz", "beta": 4, "rr_lambda": 100}.
  A null value leaves the setting at its default. Values are checked for
  type here and for range and choice by `runs.resolve_config`.

  Raises:
    ValueError: the file is missing or not a JSON object, or has a key that
      is no setting or a value of the wrong type; one line naming the file.
  """
  try:
    with open(path) as stored:
      settings = json.load(stored)
  except (OSError, json.JSONDecodeError) as error:
    raise ValueError(f"--config {path}: {error}") from None
  if not isinstance(settings, dict):
    raise ValueError(f"--config {path}: not a JSON object of settings")
  checked = {}
  for name, value in settings.items():
    if name not in SETTING_TYPES:
      raise ValueError(f"--config {path}: unknown setting {name!r}; settings "
                       f"are {', '.join(SETTING_TYPES)}")
    if value is not None:
      checked[name] = _typed(value, SETTING_TYPES[name], f"--config {path}: "
                             f"{name}")
  return checked


def _typed(value, hint, where: str):
  """`value` as the type `hint` (Optional[T] is T; an int is a float), or
  ValueError."""
  if typing.get_origin(hint) is typing.Union:
    hint = next(arg for arg in typing.get_args(hint) if arg is not type(None))
  boolean = isinstance(value, bool)  # JSON's true is no number
  if hint is float and isinstance(value, (int, float)) and not boolean:
    return float(value)
  if isinstance(value, hint) and (hint is bool or not boolean):
    return value
  kind = {int: "an integer", float: "a number", str: "a string"}.get(
      hint, f"a {hint.__name__}")
  raise ValueError(f"{where} must be {kind}, got {json.dumps(value)}")


def run_settings(args: argparse.Namespace) -> dict:
  """A pipeline's run settings: those of its `--config` file (if any), each
  replaced by the same setting's flag when given on the command line (a
  flag left out is None). Names as `SETTING_TYPES`.

  Raises:
    ValueError: a bad --config file (`read_settings`), or no dataset on the
      command line or in the file.
  """
  settings = read_settings(args.config) if args.config else {}
  settings.update({name: getattr(args, name) for name in SETTING_TYPES
                   if getattr(args, name, None) is not None})
  if "dataset" not in settings:
    raise ValueError("--dataset is required (on the command line or in the "
                     "--config file)")
  return settings


def configure_logging(argv: Optional[Sequence[str]] = None) -> bool:
  """Sets TensorFlow's logging for a command-line run, then loads it.

  Call before anything imports TensorFlow (a threshold set later has no
  effect on its C++ logger). Quiet (the default): the C++ loggers keep
  `TF_CPP_MIN_LOG_LEVEL` (3, fatal only, unless the user set it), and
  Python-side TensorFlow and absl warnings are hidden, errors kept.
  `--verbose` in `argv`: everything, `TF_CPP_MIN_LOG_LEVEL=0`.

  Args:
    argv: the command line (default `sys.argv[1:]`); only `--verbose` is
      read here.

  Returns:
    Whether `--verbose` was given.
  """
  early = argparse.ArgumentParser(add_help=False)
  early.add_argument("--verbose", action="store_true")
  verbose = early.parse_known_args(
      sys.argv[1:] if argv is None else list(argv))[0].verbose
  if verbose:
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "0"
  # Configured before TensorFlow's logger exists, so it adds no handler of
  # its own and nothing is printed twice.
  logging.basicConfig(level=logging.WARNING, format="%(message)s")
  if not verbose:
    from absl import logging as absl_logging  # pylint: disable=g-import-not-at-top
    absl_logging.set_verbosity(absl_logging.ERROR)
    logging.getLogger("tensorflow").setLevel(logging.ERROR)
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  _set_abseil_threshold(os.path.dirname(tf.__file__),
                        os.environ.get("TF_CPP_MIN_LOG_LEVEL", "0"))
  return verbose


def _set_abseil_threshold(tensorflow_dir: str, level: str) -> None:
  """Gives Abseil's C++ logger the threshold of TF_CPP_MIN_LOG_LEVEL; a no-op
  where the level is not a number or the TensorFlow build differs."""
  try:
    severity = min(max(int(level), 0), 3)
    library = ctypes.CDLL(os.path.join(tensorflow_dir,
                                       "libtensorflow_framework.so.2"))
    getattr(library, _ABSL_SET_MIN_LOG_LEVEL)(ctypes.c_int(severity))
  except (ValueError, OSError, AttributeError):
    pass


def memory_mb(field: str = "VmHWM", pid: str = "self") -> float:
  """A process's memory from /proc/<pid>/status, in MB: "VmHWM" (peak
  resident) or "VmRSS" (resident now).

  VmHWM covers only the running program: getrusage's ru_maxrss also keeps
  the peak of the parent's memory copied at fork, so a child of a large
  process would report the parent's size. Without /proc (not Linux): this
  process's ru_maxrss.
  """
  try:
    with open(f"/proc/{pid}/status", encoding="ascii") as status:
      for line in status:
        if line.startswith(field + ":"):
          return int(line.split()[1]) / 1024
  except FileNotFoundError:
    if pid != "self":
      raise
  peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
  return peak / 2**20 if sys.platform == "darwin" else peak / 1024  # bytes / KB


def how_to_serve(export_dir: str, k: int = 10, history_length: int = 3
                 ) -> str:
  """The commands that serve an export and query it, ready to paste.

  Args:
    export_dir: the export folder, as the user named it.
    k: items the example queries ask for.
    history_length: the example history is the export's `history_length`
      most popular items (item ids 1, 2, ...), known to every version.

  Returns:
    Lines: the serve command, a curl query of the running service, and the
    same query without a service (pipelines/recommend.py).
  """
  version = layout.resolve_version(export_dir)
  raw_ids = np.load(os.path.join(
      layout.piece_dir(export_dir, layout.ITEM_INDEX, version), layout.RAW_IDS))
  history = raw_ids[:history_length].tolist()
  python = _relative(sys.executable)
  model_dir = shlex.quote(export_dir)
  body = json.dumps({"history": history, "k": k})
  return "\n".join([
      "Serve it (http://127.0.0.1:8000):",
      f"  {python} {_relative(_pipeline('serve.py'))} --model-dir {model_dir}",
      "Query the service:",
      "  curl -s localhost:8000/v1/recommend -H 'Content-Type: "
      f"application/json' -d {shlex.quote(body)}",
      "Or query the export directly, without a service:",
      f"  {python} {_relative(_pipeline('recommend.py'))} --model-dir "
      f"{model_dir} --history {shlex.quote(','.join(history))} --k {k}",
  ])


def _pipeline(script: str) -> str:
  return os.path.join(ROOT, "pipelines", script)


def _relative(path: str) -> str:
  """`path` relative to the working directory when it lies below it."""
  relative = os.path.relpath(path)
  return shlex.quote(path if relative.startswith(os.pardir) else relative)
