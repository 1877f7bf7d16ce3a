"""Shared by the benchmark scripts: repo path setup, the one-JSON-line
output, machine information, timing loops, benchmark inputs, and git
checkouts of other revisions to measure against.

Importing this module (first, before anything that imports TensorFlow):
  * puts the repository root on sys.path and imports `remi_tf`, which sets
    TF_USE_LEGACY_KERAS before TensorFlow is loaded;
  * reserves the real standard output for the one JSON line `emit` writes:
    file descriptor 1 is pointed at stderr, so anything else printed to
    stdout (Python or C++ libraries) lands on stderr instead.
"""

import contextlib
import datetime
import importlib.metadata
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from typing import Callable, Dict, List, Optional, Sequence, Tuple

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import remi_tf  # noqa: E402,F401  pylint: disable=unused-import,wrong-import-position

import numpy as np  # noqa: E402  pylint: disable=wrong-import-position

sys.stdout.flush()
_RESULT_OUT = os.fdopen(os.dup(1), "w")
os.dup2(2, 1)


_THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                     "MKL_NUM_THREADS", "TF_NUM_INTRAOP_THREADS",
                     "TF_NUM_INTEROP_THREADS")


def log(message: str) -> None:
  """A progress line on stderr."""
  stamp = datetime.datetime.now().strftime("%H:%M:%S")
  print(f"[{stamp}] {message}", file=sys.stderr, flush=True)


def machine() -> Dict[str, object]:
  """Where and when the figures were measured."""
  def version(package):
    try:
      return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
      return None
  return {
      "cpu_count": os.cpu_count(),
      "platform": platform.platform(),
      "python": platform.python_version(),
      "date": datetime.datetime.now(datetime.timezone.utc).isoformat(
          timespec="seconds"),
      "tensorflow": version("tensorflow"),
      "remi_tf": remi_tf.__version__,
      # Thread settings change BLAS/TensorFlow figures on a shared machine.
      "thread_env": {name: os.environ[name] for name in _THREAD_VARIABLES
                     if name in os.environ},
  }


def emit(benchmark: str, args, results: dict) -> None:
  """Writes the benchmark's one JSON line to the real stdout."""
  payload = {"benchmark": benchmark, "machine": machine(),
             "args": dict(vars(args)), **results}
  _RESULT_OUT.write(json.dumps(payload, sort_keys=False, default=_plain)
                    + "\n")
  _RESULT_OUT.flush()


def _plain(value):
  """JSON for numpy scalars and arrays."""
  if isinstance(value, np.generic):
    return value.item()
  if isinstance(value, np.ndarray):
    return value.tolist()
  raise TypeError(f"not JSON serializable: {type(value).__name__}")


_RELATIONS = {">=": lambda a, b: a >= b, ">": lambda a, b: a > b,
              "<=": lambda a, b: a <= b, "<": lambda a, b: a < b}


def check_targets(figures: Dict[str, float],
                  targets: Dict[str, tuple]) -> Dict[str, Optional[bool]]:
  """Whether each figure meets its target.

  Args:
    figures: name -> measured value.
    targets: name -> (relation, bound), relation one of >=, >, <=, <.

  Returns:
    name -> True/False (None where the figure is missing).
  """
  return {name: None if figures.get(name) is None
          else bool(_RELATIONS[relation](figures[name], bound))
          for name, (relation, bound) in targets.items()}


def describe_targets(targets: Dict[str, tuple]) -> Dict[str, str]:
  """{"name": ">= 300"} for the JSON line."""
  return {name: f"{relation} {bound}" for name, (relation, bound)
          in targets.items()}


# --- timing ---------------------------------------------------------------


def require_positive(parser, args, names: Sequence[str]) -> None:
  """parser.error() for any of the named integer flags below 1."""
  for name in names:
    if getattr(args, name) < 1:
      parser.error(f"--{name.replace('_', '-')} must be >= 1")


def timed(function: Callable[[], object]):
  """(seconds, result) of one call."""
  start = time.perf_counter()
  result = function()
  return time.perf_counter() - start, result


def time_calls(function: Callable, inputs: Sequence,
               warmup: int = 0) -> np.ndarray:
  """float64 seconds of function(x) for each of `inputs`, timed one call
  at a time, after calling it untimed on the first `warmup` inputs."""
  for value in inputs[:warmup]:
    function(value)
  seconds = np.empty(len(inputs), np.float64)
  for position, value in enumerate(inputs):
    start = time.perf_counter()
    function(value)
    seconds[position] = time.perf_counter() - start
  return seconds


def latency_summary(seconds: Sequence[float]) -> Dict[str, float]:
  """Mean and p50/p90/p99/max of per-call latencies, in milliseconds."""
  ms = np.asarray(seconds, np.float64) * 1e3
  if ms.size == 0:
    return {"count": 0}
  p50, p90, p99 = np.percentile(ms, [50, 90, 99])
  return {"count": int(ms.size), "mean_ms": float(ms.mean()),
          "p50_ms": float(p50), "p90_ms": float(p90), "p99_ms": float(p99),
          "max_ms": float(ms.max())}


def chunks(array: np.ndarray, size: int) -> List[np.ndarray]:
  """Consecutive slices of at most `size` rows."""
  return [array[start:start + size] for start in range(0, len(array), size)]


# --- inputs ---------------------------------------------------------------


def random_histories(rng: np.random.Generator, users: int, seq_len: int,
                     num_items: int, max_padding: int) -> np.ndarray:
  """int32 [users, seq_len] histories of uniform item ids 1..num_items,
  right-padded with 0 after seq_len - U{0..max_padding} real items."""
  ids = rng.integers(1, num_items + 1, size=(users, seq_len), dtype=np.int32)
  max_padding = min(max_padding, seq_len - 1)
  lengths = seq_len - rng.integers(0, max_padding + 1, size=users)
  return np.where(np.arange(seq_len)[None] < lengths[:, None], ids,
                  0).astype(np.int32)


def export_metadata(model_dir: str) -> dict:
  """The metadata of the export's newest complete version."""
  from remi_tf import layout  # pylint: disable=g-import-not-at-top
  return layout.read_metadata(model_dir, layout.resolve_version(model_dir))


def dataset_histories(metadata: dict, cache_dir: Optional[str],
                      expected_vocab: np.ndarray,
                      splits: Sequence[str] = ("test", "valid", "train"),
                      raw_file: Optional[str] = None):
  """Real users' histories of the dataset an export was trained on.

  The dataset is rebuilt from the run configuration recorded in the
  export's metadata (raw file + protocol, through the cache), and each
  split's evaluation histories (the first 80% of each user's sequence,
  last seq_len items) are taken, splits in the order given.

  Args:
    metadata: the export's metadata.json.
    cache_dir: download/preprocessing cache (None: the default).
    expected_vocab: the export's raw ids (item_index/<v>/raw_ids.npy); the
      dataset must have exactly these items, else ValueError.
    splits: which users, in order.
    raw_file: a local copy of the export's raw file (`--raw-file`), needed
      unless its dataset is downloaded.

  Returns:
    (histories int32 [U, seq_len] 0-padded, item_vocab str [N],
    {split: users}) -- raw id of item id i is item_vocab[i - 1].

  Raises:
    Whatever loading the dataset raises (e.g. the raw file is gone).
  """
  from remi_tf import export_evaluation  # pylint: disable=g-import-not-at-top
  from remi_tf.data.inputs import evaluation_examples  # pylint: disable=g-import-not-at-top
  dataset = export_evaluation.dataset_of_export(metadata, expected_vocab,
                                                raw_file, cache_dir)
  seq_len = int(metadata["seq_len"])
  parts, counts = [], {}
  for split in splits:
    histories = evaluation_examples(getattr(dataset, split),
                                    seq_len).histories
    histories = histories[(histories > 0).any(axis=1)]
    parts.append(histories)
    counts[split] = len(histories)
  return np.concatenate(parts), dataset.item_vocab, counts


def raw_histories(histories: np.ndarray, item_vocab: np.ndarray
                  ) -> List[List[str]]:
  """0-padded item-id histories -> lists of raw ids without padding."""
  return [item_vocab[row[row > 0] - 1].tolist() for row in histories]


# --- other revisions --------------------------------------------------------


def git(*command: str) -> str:
  """Runs git in the repository; its output without the final newline."""
  return subprocess.run(["git", "-C", ROOT, *command], check=True,
                        capture_output=True, text=True).stdout.rstrip()


@contextlib.contextmanager
def git_worktree(commit: str, folder: str):
  """A detached checkout of `commit` at `folder`, removed on exit."""
  git("worktree", "add", "--detach", folder, commit)
  try:
    yield folder
  finally:
    try:
      git("worktree", "remove", "--force", folder)
    except subprocess.CalledProcessError:
      shutil.rmtree(folder, ignore_errors=True)
      git("worktree", "prune")


def known_flags(flags: Sequence[str], help_text: str
                ) -> Tuple[List[str], List[str]]:
  """The flags a script accepts, by its --help text.

  Args:
    flags: command-line tokens, each `--name` followed by its values.
    help_text: that script's `--help` output.

  Returns:
    (the tokens of the flags named in `help_text`, the names of the others).
  """
  kept, dropped = [], []
  groups = []
  for token in flags:
    if token.startswith("--") or not groups:
      groups.append([token])
    else:
      groups[-1].append(token)
  for name, *values in groups:
    if re.search(rf"(?<![\w-]){re.escape(name)}(?![\w-])", help_text):
      kept += [name, *values]
    else:
      dropped.append(name)
  return kept, dropped
