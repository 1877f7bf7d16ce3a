"""Latency, throughput and re-export under load of the HTTP service
(`pipelines/serve.py`) over real HTTP on 127.0.0.1.

Each variant of the service runs as a subprocess `pipelines/serve.py
--model-dir DIR --host 127.0.0.1 --port P --model-version V` (V: the
export's newest version, so a poll never changes what is measured), started
for its measurement and always terminated after it (also on errors and
Ctrl-C). Variants (--variants):

  batched     the service's defaults (concurrent requests answered together)
  unbatched   --max-batch 1
  reference   with --ref REV: the service of git revision REV, run from a
              `git worktree add --detach` checkout in a temporary folder
              (removed at the end, also on failure), given only the flags
              its serve.py --help names; revisions before versioned item
              indexes (no remi_tf/layout.py) get the measured version as a
              one-version folder of symbolic links

--rounds R alternates the variants R times (start, measure, stop each;
every other round in reverse order); figures are medians over the rounds. Each variant-round measures, after
--warmup-requests untimed requests one at a time and as many at the highest
concurrency:

  (a) sequential: --requests single `POST /v1/recommend {"history": [...],
      "k": --k}` one after the other from one client (--client);
  (b) under load: --concurrency threads, each with its own client,
      sharing --load-requests requests in total;
  (c) levels: for each of --concurrency-levels (threads as in (b)),
      requests for --seconds at the highest level and
      --seconds-lower-levels at the others;

each reporting completed requests, errors (count and first), requests/s
(completed / wall time), p50/p90/p99 latency, the cores the client, the
server and the whole machine kept busy meanwhile, and the server's CPU
time per request (less sensitive to other jobs than latency); and the
server's resident memory after the warm-up and after (c). With --ref, the batched variant's
figures over the reference's: p50 at the lowest level (target <= 0.5),
requests/s at the highest (>= 2), and its p99 at the lowest (< 10 ms).

With --reexport-steps N, re-export under load: the service (batched
defaults, --reexport-poll-seconds) serves a copy of the export folder under
the highest concurrency while `pipelines/train.py` trains a second model
(the export's configuration, --reexport-seed, N steps, --raw-file) and
exports it into the copy. Reported: the time from the publish (the new
version complete in the folder) to the first answer naming it, against one
poll interval plus the new version's load time (timed in this process
right after the switch, the load still running); failed requests (must be 0); and, for the first and last
--check-answers answers of each version, whether their items equal those
`Recommender(load_artifacts(copy, None, version))` gives for the same
history.

Request histories are real users' histories (raw ids) of the dataset the
export was trained on (rebuilt from its metadata through --cache-dir, and
--raw-file for a local raw file: test users, then validation and training
users); if the dataset cannot be loaded (or with --random-histories) they
are random raw ids from item_index/<v>/raw_ids.npy, which the JSON records.

The client runs on the same machine as the server (2 cores: client and
server compete for them, so the figures are an upper bound of the server's
latency).

  python benchmarks/serving.py --model-dir saved_models/gowalla
  python benchmarks/serving.py --model-dir saved_models/books \\
      --raw-file interactions.csv.gz --ref f6ecd87 --rounds 2 \\
      --reexport-steps 300

Prints progress on stderr and one JSON line on stdout.
"""

import argparse
import collections
import contextlib
import http.client
import itertools
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from typing import Callable, Dict, List, Optional, Sequence, Tuple

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common  # noqa: E402  (repo root on sys.path; imports remi_tf first)
from _common import git, git_worktree, known_flags  # noqa: E402

import numpy as np  # noqa: E402

from remi_tf import cli, layout  # noqa: E402

SERVE = os.path.join("pipelines", "serve.py")
TRAIN = os.path.join("pipelines", "train.py")
# Flags of each variant of this tree's service, beside the common ones.
VARIANT_FLAGS = {"batched": (), "unbatched": ("--max-batch", "1")}
REFERENCE = "reference"
# How long the load goes on after the first answer of the new version.
REEXPORT_TAIL_SECONDS = 5.0
TARGETS = {
    "p99_ms": ("<", 10.0),
    "requests_per_second": (">=", 300.0),
    "load_errors": ("<=", 0),
    "p50_ms_ratio_vs_reference": ("<=", 0.5),
    "requests_per_second_ratio_vs_reference": (">=", 2.0),
    "p99_ms_lowest_concurrency": ("<", 10.0),
    "reexport_failed_requests": ("<=", 0),
    "reexport_version_regressions": ("<=", 0),
    "reexport_mismatched_answers": ("<=", 0),
    "reexport_new_version_answers": (">=", 1),
    "reexport_switch_margin_seconds": (">=", 0.0),
}
MEDIAN_KEYS = ("requests_per_second", "mean_ms", "p50_ms", "p90_ms",
               "p99_ms", "max_ms", "client_cpu_share", "server_cpu_share",
               "machine_cpu_share", "server_cpu_ms_per_request")


def parse_args(argv=None):
  parser = argparse.ArgumentParser(
      description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  parser.add_argument("--model-dir", required=True,
                      help="an export, e.g. saved_models/gowalla")
  parser.add_argument("--cache-dir", help="the dataset cache of the export's "
                      "run (default: remi_tf's default)")
  parser.add_argument("--raw-file", help="a local copy of the raw file the "
                      "export was trained on (unless it was downloaded)")
  parser.add_argument("--random-histories", action="store_true",
                      help="random raw ids instead of real users' histories")
  parser.add_argument("--port", type=int, default=0,
                      help="server port on 127.0.0.1 (0: a free one)")
  parser.add_argument("--k", type=int, default=50)
  parser.add_argument("--requests", type=int, default=1000,
                      help="sequential requests (a)")
  parser.add_argument("--warmup-requests", type=int, default=50)
  parser.add_argument("--concurrency", type=int, default=8,
                      help="client threads (b)")
  parser.add_argument("--load-requests", type=int, default=2000,
                      help="requests in total under load (b)")
  parser.add_argument("--concurrency-levels", type=int, nargs="+",
                      default=[1, 8, 32], help="client threads of (c)")
  parser.add_argument("--seconds", type=float, default=60.0,
                      help="duration of (c) at the highest level")
  parser.add_argument("--seconds-lower-levels", type=float,
                      help="duration of (c) at the other levels (default: "
                      "--seconds)")
  parser.add_argument("--variants", nargs="+", choices=sorted(VARIANT_FLAGS),
                      default=["batched", "unbatched"])
  parser.add_argument("--ref", metavar="REV", help="also measure the "
                      "service of this git revision, e.g. f6ecd87")
  parser.add_argument("--rounds", type=int, default=1,
                      help="alternations of the variants")
  parser.add_argument("--reexport-steps", type=int, default=0,
                      help="train and export a second model of this many "
                      "steps under load (0: no re-export)")
  parser.add_argument("--reexport-seed", type=int, default=7)
  parser.add_argument("--reexport-poll-seconds", type=float, default=2.0)
  parser.add_argument("--check-answers", type=int, default=50,
                      help="first and last answers of each version checked "
                      "after the re-export")
  parser.add_argument("--timeout", type=float, default=30.0,
                      help="seconds per request")
  parser.add_argument("--startup-timeout", type=float, default=300.0,
                      help="seconds to wait for /healthz, and for a new "
                      "version after its publish")
  parser.add_argument("--seed", type=int, default=2023)
  parser.add_argument("--client", choices=sorted(CLIENTS), default="stdlib",
                      help="the load's HTTP client (default stdlib: "
                      "http.client, a\nkeep-alive connection per thread; "
                      "httpx: the client of figures\nbefore 2026-11-27, "
                      "which spends about 2 ms of CPU per request)")
  args = parser.parse_args(argv)
  _common.require_positive(
      parser, args, ("k", "requests", "concurrency", "load_requests",
                     "rounds", "check_answers"))
  if min(args.concurrency_levels) < 1:
    parser.error("--concurrency-levels must be >= 1")
  if args.seconds <= 0 or (args.seconds_lower_levels is not None
                           and args.seconds_lower_levels <= 0):
    parser.error("--seconds and --seconds-lower-levels must be > 0")
  if args.reexport_steps < 0 or args.reexport_poll_seconds <= 0:
    parser.error("--reexport-steps must be >= 0 and --reexport-poll-seconds "
                 "> 0")
  args.ref_commit = None
  if args.ref is not None:
    try:
      args.ref_commit = git("rev-parse", "--verify", f"{args.ref}^{{commit}}")
    except subprocess.CalledProcessError:
      parser.error(f"--ref {args.ref} is not a revision of this repository")
  return args


def free_port() -> int:
  with socket.socket() as sock:
    sock.bind(("127.0.0.1", 0))
    return sock.getsockname()[1]


def measured_source() -> dict:
  """The commit of this tree and the files of the service's code that
  differ from it (what the batched and unbatched variants ran)."""
  changed = git("status", "--porcelain", "--", "remi_tf", "pipelines")
  return {"commit": git("rev-parse", "HEAD"),
          "uncommitted": [line[3:] for line in changed.splitlines()]}


def request_histories(args, metadata: dict):
  """Raw-id histories to send, their source ({split: users} or "random")
  and the reason for a random fallback (None if none)."""
  raw_ids = np.load(os.path.join(
      layout.piece_dir(args.model_dir, layout.ITEM_INDEX, metadata["version"]),
      layout.RAW_IDS)).astype(str)
  if not args.random_histories:
    try:
      histories, item_vocab, counts = _common.dataset_histories(
          metadata, args.cache_dir, expected_vocab=raw_ids,
          raw_file=args.raw_file)
      wanted = max(args.requests, args.load_requests) + args.warmup_requests
      return (_common.raw_histories(histories[:wanted], item_vocab),
              counts, None)
    except Exception as error:  # pylint: disable=broad-except
      reason = f"{type(error).__name__}: {error}"
      _common.log(f"WARNING: cannot load the dataset ({reason}); sending "
                  "random raw ids")
  else:
    reason = None
  rng = np.random.default_rng(args.seed)
  seq_len = int(metadata["seq_len"])
  ids = _common.random_histories(rng, 1000, seq_len, len(raw_ids),
                                 max_padding=seq_len - 1)
  return _common.raw_histories(ids, raw_ids), "random", reason


# --- servers ----------------------------------------------------------------


class Server:
  """`<root>/pipelines/serve.py` in a subprocess on 127.0.0.1, its output
  in a temporary file; a context manager that always terminates it.

  Args:
    model_dir: the export folder to serve.
    port: the port on 127.0.0.1.
    flags: more serve.py flags.
    root: the source tree whose serve.py runs (this repository's, or a
      worktree's).
  """

  def __init__(self, model_dir: str, port: int, flags: Sequence[str] = (),
               root: str = _common.ROOT):
    self.port = port
    self.base = f"http://127.0.0.1:{port}"
    self._output = tempfile.TemporaryFile(mode="w+")
    self._process = subprocess.Popen(
        [sys.executable, os.path.join(root, SERVE), "--model-dir",
         os.path.abspath(model_dir), "--host", "127.0.0.1", "--port",
         str(port), *flags],
        cwd=root, stdout=self._output, stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL)

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.stop()

  def output_tail(self, chars: int = 3000) -> str:
    self._output.flush()
    self._output.seek(0)
    return self._output.read()[-chars:]

  def wait_ready(self, timeout: float) -> float:
    """Seconds until /healthz answered 200; raises if the server exits or
    the timeout passes."""
    import httpx  # pylint: disable=g-import-not-at-top
    start = time.perf_counter()
    while True:
      if self._process.poll() is not None:
        raise RuntimeError(f"serve.py exited with {self._process.returncode}:"
                           f"\n{self.output_tail()}")
      try:
        if httpx.get(f"{self.base}/healthz", timeout=1.0).status_code == 200:
          return time.perf_counter() - start
      except httpx.HTTPError:
        pass
      if time.perf_counter() - start > timeout:
        raise TimeoutError(f"serve.py not ready after {timeout}s:\n"
                           f"{self.output_tail()}")
      time.sleep(0.3)

  def memory_mb(self, field: str) -> float:
    """The server process's "VmRSS" (resident now) or "VmHWM" (peak)."""
    return cli.memory_mb(field, str(self._process.pid))

  def cpu_seconds(self) -> float:
    """CPU time the server process has used (user + system)."""
    with open(f"/proc/{self._process.pid}/stat", encoding="ascii") as stat:
      # Fields after the command name, which may hold spaces: utime and
      # stime are the 14th and 15th of the whole line.
      fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

  def stop(self) -> None:
    if self._process.poll() is None:
      self._process.terminate()
      try:
        self._process.wait(timeout=30)
      except subprocess.TimeoutExpired:
        self._process.kill()
        self._process.wait()
    self._output.close()


def serve_help(root: str, timeout: float) -> str:
  """`<root>/pipelines/serve.py --help`."""
  return subprocess.run([sys.executable, os.path.join(root, SERVE), "--help"],
                        cwd=root, capture_output=True, text=True, check=True,
                        timeout=timeout).stdout


def single_version_folder(model_dir: str, version: int, folder: str) -> str:
  """`version` of an export as revisions before versioned item indexes read
  one, in `folder`: metadata.json (the version's, with the "versions" of
  its pieces that they wrote), and item_index/ and user_tower/<version>/ as
  symbolic links into `model_dir`. Returns `folder`."""
  os.makedirs(os.path.join(folder, layout.USER_TOWER))
  model_dir = os.path.abspath(model_dir)
  metadata = layout.read_metadata(model_dir, version)
  metadata["versions"] = {layout.USER_TOWER: version,
                          layout.RETRIEVAL: version}
  with open(os.path.join(folder, layout.METADATA), "w") as out:
    json.dump(metadata, out)
  os.symlink(layout.piece_dir(model_dir, layout.ITEM_INDEX, version),
             os.path.join(folder, layout.ITEM_INDEX))
  os.symlink(layout.piece_dir(model_dir, layout.USER_TOWER, version),
             os.path.join(folder, layout.USER_TOWER, str(version)))
  return folder


# --- load -------------------------------------------------------------------


class AnswerLog:
  """Answers by the version they name, shared by a load's threads: when
  each version first answered, how many answers it gave, and the items of
  its first and last `keep` answers with their request numbers."""

  def __init__(self, keep: int):
    self.keep = keep
    self.first_at: Dict[int, float] = {}
    self.counts = collections.Counter()
    self._first = collections.defaultdict(list)
    self._last = collections.defaultdict(
        lambda: collections.deque(maxlen=keep))
    self._lock = threading.Lock()

  def record(self, version: int, number: int, items: List[str],
             at: float) -> None:
    """Answer of request `number`, received at perf_counter `at`."""
    with self._lock:
      self.first_at.setdefault(version, at)
      self.counts[version] += 1
      kept = (self._first[version] if len(self._first[version]) < self.keep
              else self._last[version])
      kept.append((number, items))

  def samples(self) -> List[Tuple[int, int, List[str]]]:
    """(version, request number, items) of the kept answers."""
    with self._lock:
      return [(version, number, items) for version in sorted(self._first)
              for number, items in (self._first[version]
                                    + list(self._last[version]))]


class StdlibClient:
  """POSTs JSON over one keep-alive HTTP/1.1 connection (the standard
  library's http.client). On a 2-core machine the client's CPU is part of
  each latency: this one spends a fraction of httpx's per request.

  Args:
    base: the service's base URL, http://host:port.
    timeout: seconds, per socket operation.
  """

  def __init__(self, base: str, timeout: float):
    address = urllib.parse.urlsplit(base)
    self._connection = http.client.HTTPConnection(
        address.hostname, address.port, timeout=timeout)

  def post(self, path: str, payload) -> Tuple[int, bytes]:
    """(status, body) of POST `path` with `payload` as JSON."""
    try:
      self._connection.request("POST", path, json.dumps(payload).encode(),
                               {"Content-Type": "application/json"})
      response = self._connection.getresponse()
      return response.status, response.read()
    except Exception:
      self._connection.close()  # the next request reconnects
      raise

  def close(self) -> None:
    self._connection.close()


class HttpxClient:
  """`StdlibClient`'s interface over an httpx.Client."""

  def __init__(self, base: str, timeout: float):
    import httpx  # pylint: disable=g-import-not-at-top
    self._client = httpx.Client(base_url=base, timeout=timeout)

  def post(self, path: str, payload) -> Tuple[int, bytes]:
    """(status, body) of POST `path` with `payload` as JSON."""
    response = self._client.post(path, json=payload)
    return response.status_code, response.content

  def close(self) -> None:
    self._client.close()


CLIENTS = {"stdlib": StdlibClient, "httpx": HttpxClient}


class Tally:
  """One client thread's requests: latencies of the successful ones, the
  errors, and answers that named an older version than the thread's
  previous answer (merged over threads at the end)."""

  def __init__(self, log: Optional[AnswerLog] = None):
    self.seconds, self.errors, self.first_error = [], 0, None
    self.items = []
    self.version_regressions = 0
    self._last_version = None
    self._log = log

  def send(self, client, number: int, history, k: int) -> None:
    start = time.perf_counter()
    try:
      status, body = client.post("/v1/recommend",
                                 {"history": history, "k": k})
      finished = time.perf_counter()
      if status != 200:
        raise RuntimeError(f"HTTP {status}: {body[:200]!r}")
      answer = json.loads(body)
      self.items.append(len(answer["items"]))
      self.seconds.append(finished - start)
    except Exception as error:  # pylint: disable=broad-except
      self.errors += 1
      if self.first_error is None:
        self.first_error = f"{type(error).__name__}: {error}"
      return
    version = answer.get("model_version")  # older services name none
    if version is None:
      return
    if self._last_version is not None and version < self._last_version:
      self.version_regressions += 1
    self._last_version = version
    if self._log is not None:
      self._log.record(version, number, answer["items"], finished)

  @classmethod
  def merge(cls, tallies):
    merged = cls()
    for tally in tallies:
      merged.seconds += tally.seconds
      merged.items += tally.items
      merged.errors += tally.errors
      merged.version_regressions += tally.version_regressions
      merged.first_error = merged.first_error or tally.first_error
    return merged

  def summary(self, wall_seconds: float) -> dict:
    return {"completed": len(self.seconds), "errors": self.errors,
            "first_error": self.first_error,
            "wall_seconds": wall_seconds,
            "requests_per_second": len(self.seconds) / wall_seconds,
            "mean_items_returned": float(np.mean(self.items))
                                   if self.items else None,
            "version_regressions": self.version_regressions,
            **_common.latency_summary(self.seconds)}


def run_load(base: str, histories, args, concurrency: int,
             requests: Optional[int] = None, seconds: Optional[float] = None,
             stop: Optional[threading.Event] = None,
             log: Optional[AnswerLog] = None) -> dict:
  """`concurrency` threads, each with its own --client client, send requests
  one after the other (request i: histories[i % len(histories)]) until
  `requests` were started in total, `seconds` passed or `stop` is set,
  whichever comes first (give at least one); the requests in flight then
  finish. Returns the merged `Tally.summary` with the concurrency."""
  counter = itertools.count()
  deadline = None

  def next_request() -> Optional[int]:
    number = next(counter)  # atomic under the GIL
    if ((requests is not None and number >= requests)
        or (deadline is not None and time.perf_counter() >= deadline)
        or (stop is not None and stop.is_set())):
      return None
    return number

  def worker(client, tally):
    ready.wait()
    while (number := next_request()) is not None:
      tally.send(client, number, histories[number % len(histories)], args.k)

  clients = [CLIENTS[args.client](base, args.timeout)
             for _ in range(concurrency)]
  tallies = [Tally(log) for _ in clients]
  ready = threading.Barrier(concurrency + 1)
  threads = [threading.Thread(target=worker, args=pair, daemon=True)
             for pair in zip(clients, tallies)]
  try:
    for thread in threads:
      thread.start()
    start = time.perf_counter()
    if seconds is not None:
      deadline = start + seconds
    ready.wait()
    for thread in threads:
      thread.join()
    wall = time.perf_counter() - start
  finally:
    for client in clients:
      client.close()
  return {"concurrency": concurrency, **Tally.merge(tallies).summary(wall)}


def machine_busy_seconds() -> float:
  """CPU time all processes of the machine have used (all cores)."""
  with open("/proc/stat", encoding="ascii") as stat:
    user, nice, system, _, _, irq, softirq = map(
        int, stat.readline().split()[1:8])  # idle and iowait skipped
  return (user + nice + system + irq + softirq) / os.sysconf("SC_CLK_TCK")


def with_cpu(server: Server, *load_args, **load_kwargs) -> dict:
  """`run_load(server.base, *load_args, **load_kwargs)` with the cores the
  client (this process), the server and the whole machine kept busy
  meanwhile (CPU seconds per second), to tell a saturated client or a busy
  machine, and the server's CPU milliseconds per completed request."""
  client, served, busy = (time.process_time(), server.cpu_seconds(),
                          machine_busy_seconds())
  summary = run_load(server.base, *load_args, **load_kwargs)
  wall = summary["wall_seconds"]
  served = server.cpu_seconds() - served
  summary["client_cpu_share"] = (time.process_time() - client) / wall
  summary["server_cpu_share"] = served / wall
  summary["server_cpu_ms_per_request"] = (1e3 * served / summary["completed"]
                                          if summary["completed"] else None)
  summary["machine_cpu_share"] = (machine_busy_seconds() - busy) / wall
  return summary


def describe(name: str, summary: dict) -> str:
  """A progress line of one measurement."""
  return (f"{name}: {summary['completed']} requests, "
          f"{summary['requests_per_second']:,.0f} req/s, p50 "
          f"{summary.get('p50_ms', float('nan')):.2f} ms, p99 "
          f"{summary.get('p99_ms', float('nan')):.2f} ms, "
          f"{summary['errors']} errors; cores busy: client "
          f"{summary.get('client_cpu_share', float('nan')):.2f}, server "
          f"{summary.get('server_cpu_share', float('nan')):.2f}, machine "
          f"{summary.get('machine_cpu_share', float('nan')):.2f}")


def warm_up(server: Server, histories, args) -> None:
  """--warmup-requests one at a time, then as many at the highest
  concurrency; raises if any fails."""
  for concurrency in (1, max(args.concurrency_levels)):
    warm = run_load(server.base, histories, args, concurrency,
                    requests=args.warmup_requests)
    if warm["errors"]:
      raise RuntimeError(f"warm-up requests failed: {warm['first_error']}")


def level_seconds(args, concurrency: int) -> float:
  """How long (c) runs at `concurrency`."""
  if concurrency == max(args.concurrency_levels):
    return args.seconds
  return args.seconds_lower_levels or args.seconds


def measure(server: Server, histories, args) -> dict:
  """(a), (b) and (c) against a started server, and its memory."""
  startup = server.wait_ready(args.startup_timeout)
  _common.log(f"ready after {startup:.1f}s")
  warm_up(server, histories, args)
  rss_before = server.memory_mb("VmRSS")
  sequential = with_cpu(server, histories, args, 1, requests=args.requests)
  _common.log(describe("sequential", sequential))
  load = with_cpu(server, histories, args, args.concurrency,
                  requests=args.load_requests)
  _common.log(describe(f"{args.load_requests} at {args.concurrency}", load))
  levels = {}
  for concurrency in args.concurrency_levels:
    levels[str(concurrency)] = with_cpu(
        server, histories, args, concurrency,
        seconds=level_seconds(args, concurrency))
    _common.log(describe(f"concurrency {concurrency}",
                         levels[str(concurrency)]))
  return {"startup_seconds": startup, "rss_mb_before": rss_before,
          "rss_mb_after": server.memory_mb("VmRSS"),
          "peak_rss_mb": server.memory_mb("VmHWM"),
          "sequential": sequential, "load": load, "levels": levels}


# --- figures ----------------------------------------------------------------


def median_summary(summaries: Sequence[dict]) -> dict:
  """One measurement over rounds: the median of each latency and rate,
  the totals of completed requests and errors, the first error."""
  merged = {key: float(np.median([s[key] for s in summaries]))
            for key in MEDIAN_KEYS
            if all(s.get(key) is not None for s in summaries)}
  merged["completed"] = sum(s["completed"] for s in summaries)
  merged["errors"] = sum(s["errors"] for s in summaries)
  merged["first_error"] = next((s["first_error"] for s in summaries
                                if s["first_error"]), None)
  merged["rounds"] = len(summaries)
  return merged


def variant_medians(rounds: Sequence[dict]) -> dict:
  """A variant's measurements, median over its rounds."""
  return {"sequential": median_summary([r["sequential"] for r in rounds]),
          "load": median_summary([r["load"] for r in rounds]),
          "levels": {level: median_summary([r["levels"][level]
                                            for r in rounds])
                     for level in rounds[0]["levels"]}}


def _ratio(numerator, denominator) -> Optional[float]:
  if numerator is None or not denominator:
    return None
  return numerator / denominator


def level_ratios(candidate: dict, baseline: dict) -> dict:
  """Per concurrency level, candidate / baseline of p50, p99 and
  requests/s (levels: {level: median_summary})."""
  return {level: {key: _ratio(candidate[level].get(key),
                              baseline[level].get(key))
                  for key in ("p50_ms", "p99_ms", "requests_per_second")}
          for level in candidate if level in baseline}


def reference_figures(candidate: dict, reference: Optional[dict]
                      ) -> Dict[str, Optional[float]]:
  """The figures the targets against a reference judge, from per-level
  medians: the candidate's p50 over the reference's at the lowest level,
  its requests/s over the reference's at the highest, and its p99 at the
  lowest (ratios None without a reference)."""
  levels = sorted(candidate, key=int)
  low, high = levels[0], levels[-1]
  ratios = level_ratios(candidate, reference) if reference else {}
  return {
      "p50_ms_ratio_vs_reference": ratios.get(low, {}).get("p50_ms"),
      "requests_per_second_ratio_vs_reference":
          ratios.get(high, {}).get("requests_per_second"),
      "p99_ms_lowest_concurrency": candidate[low].get("p99_ms"),
  }


def total_errors(rounds_by_variant: Dict[str, List[dict]]) -> int:
  """Errors of every measurement of every variant-round."""
  return sum(measured["errors"]
             for rounds in rounds_by_variant.values() for result in rounds
             for measured in [result["sequential"], result["load"],
                              *result["levels"].values()])


# --- re-export under load ---------------------------------------------------


def check_answers(samples: Sequence[Tuple[int, int, List[str]]], histories,
                  recompute: Callable[[int, List[str]], List[str]]) -> dict:
  """Whether answers equal the recomputed ones of the version they name.

  Args:
    samples: (version, request number, items) of answers (`AnswerLog`).
    histories: the request histories (request i sent
      histories[i % len(histories)]).
    recompute: (version, history) -> the items that version gives.

  Returns:
    {"checked", "mismatched", "checked_by_version", "first_mismatch"}.
  """
  checked = collections.Counter()
  mismatched, first = 0, None
  for version, number, items in samples:
    expected = recompute(version, histories[number % len(histories)])
    checked[version] += 1
    if items != expected:
      mismatched += 1
      if first is None:
        first = {"version": version, "request": number,
                 "answered": items[:10], "expected": expected[:10]}
  return {"checked": sum(checked.values()), "mismatched": mismatched,
          "checked_by_version": {str(v): n for v, n in sorted(checked.items())},
          "first_mismatch": first}


def reexport_command(args, metadata: dict, export_dir: str,
                     output: str) -> List[str]:
  """train.py with the export's dataset and model configuration, another
  seed, --reexport-steps steps (one validation), exporting into
  `export_dir`."""
  config = metadata["config"]
  command = [sys.executable, os.path.join(_common.ROOT, TRAIN), "--dataset",
             config["dataset"], "--threshold", str(config["threshold"])]
  for name, value in sorted(config["model"].items()):
    command += [f"--{name.replace('_', '-')}", str(value)]
  command += ["--max-steps", str(args.reexport_steps), "--eval-every",
              str(args.reexport_steps), "--seed", str(args.reexport_seed),
              "--output", output, "--export-dir", export_dir]
  if args.raw_file:
    command += ["--raw-file", args.raw_file]
  if args.cache_dir:
    command += ["--cache-dir", args.cache_dir]
  return command


def watch_publish(export_dir: str, version: int,
                  stop: threading.Event) -> Dict[str, float]:
  """Starts a thread that notes (perf_counter, in the returned dict under
  "at" and "version") when a complete version newer than `version` appears
  in `export_dir`; it ends then or when `stop` is set."""
  published = {}

  def watch():
    while not stop.is_set():
      newest = layout.latest_version(export_dir)
      if newest is not None and newest > version:
        published.update(at=time.perf_counter(), version=newest)
        return
      time.sleep(0.01)

  threading.Thread(target=watch, daemon=True).start()
  return published


def reexport_under_load(args, histories, metadata: dict, folder: str) -> dict:
  """The re-export check (module docstring) in a temporary `folder`."""
  from remi_tf import serving  # pylint: disable=g-import-not-at-top
  copy = os.path.join(folder, "export")
  shutil.copytree(args.model_dir, copy,
                  ignore=shutil.ignore_patterns(".*"))
  old = layout.latest_version(copy)
  command = reexport_command(args, metadata, copy,
                             os.path.join(folder, "run"))

  def load(version):
    return serving.Recommender(serving.load_artifacts(copy, None, version))

  recommenders = {old: load(old)}  # TensorFlow is imported before the load
  log, stop = AnswerLog(args.check_answers), threading.Event()
  with Server(copy, args.port or free_port(), ["--poll-seconds",
                                               str(args.reexport_poll_seconds)]
              ) as server:
    server.wait_ready(args.startup_timeout)
    warm_up(server, histories, args)
    rss_before = server.memory_mb("VmRSS")
    loads = []
    load_thread = threading.Thread(target=lambda: loads.append(with_cpu(
        server, histories, args, max(args.concurrency_levels), stop=stop,
        log=log)))
    load_thread.start()
    published = watch_publish(copy, old, stop)
    try:
      _common.log(f"training version {old + 1} under load")
      with open(os.path.join(folder, "train.log"), "w") as train_log:
        train_seconds, trained = _common.timed(lambda: subprocess.run(
            command, cwd=_common.ROOT, stdout=train_log,
            stderr=subprocess.STDOUT, check=False))
      if trained.returncode != 0:
        with open(os.path.join(folder, "train.log")) as written:
          raise RuntimeError(f"train.py exited with {trained.returncode}:\n"
                             f"{written.read()[-3000:]}")
      deadline = time.perf_counter() + args.startup_timeout
      while (published.get("version") not in log.first_at
             and time.perf_counter() < deadline):
        time.sleep(0.05)
      new, load_seconds = published.get("version"), None
      if new in log.first_at:
        # Timed as the server loaded it: while the load runs.
        load_seconds, recommenders[new] = _common.timed(lambda: load(new))
      time.sleep(max(0.0, REEXPORT_TAIL_SECONDS - (load_seconds or 0.0)))
    finally:
      stop.set()
      load_thread.join()
    load_figures = loads[0]
    rss_after = server.memory_mb("VmRSS")
    peak_rss = server.memory_mb("VmHWM")
  _common.log(describe("re-export load", load_figures))
  switch = (log.first_at[new] - published["at"] if new in log.first_at
            else None)
  bound = (args.reexport_poll_seconds + load_seconds
           if load_seconds is not None else None)
  exactness = check_answers(
      [sample for sample in log.samples() if sample[0] in recommenders],
      histories, lambda version, history: recommenders[version].recommend(
          [history], args.k)[0].items)
  return {
      "poll_seconds": args.reexport_poll_seconds,
      "train_steps": args.reexport_steps, "train_seconds": train_seconds,
      "from_version": old, "to_version": new,
      "publish_to_first_answer_seconds": switch,
      "load_seconds_in_process": load_seconds,
      "bound_seconds": bound,
      "switch_margin_seconds": _difference(bound, switch),
      "answers_by_version": {str(v): n for v, n in sorted(log.counts.items())},
      "new_version_answers": log.counts[new] if new is not None else 0,
      "unchecked_versions": sorted(set(log.counts) - set(recommenders)),
      "exactness": exactness,
      "rss_mb_before": rss_before, "rss_mb_after": rss_after,
      "peak_rss_mb": peak_rss, "load": load_figures}


def _difference(a, b) -> Optional[float]:
  return None if a is None or b is None else a - b


# --- the run ----------------------------------------------------------------


def variant_servers(args, version: int, folder: str):
  """(name, source tree, flags, flags dropped, model dir) of each variant;
  with --ref, checks the reference revision out into `folder` (the caller
  removes it with the worktree context of `main`)."""
  pinned = ("--model-version", str(version))
  servers = [(name, _common.ROOT, [*pinned, *VARIANT_FLAGS[name]], [],
              args.model_dir) for name in args.variants]
  if args.ref is not None:
    root = os.path.join(folder, "reference")
    kept, dropped = known_flags(pinned, serve_help(root,
                                                   args.startup_timeout))
    model_dir = args.model_dir
    if not os.path.exists(os.path.join(root, "remi_tf", "layout.py")):
      model_dir = single_version_folder(args.model_dir, version,
                                        os.path.join(folder, "model"))
    servers.append((REFERENCE, root, kept, dropped, model_dir))
  return servers


def main(argv=None) -> int:
  args = parse_args(argv)
  metadata = _common.export_metadata(args.model_dir)
  version = int(metadata["version"])
  histories, source, fallback_reason = request_histories(args, metadata)
  lengths = [len(h) for h in histories]
  _common.log(f"{len(histories)} request histories ({source}), mean length "
              f"{np.mean(lengths):.1f}")

  source_state = measured_source()
  rounds = collections.defaultdict(list)
  reexport = None
  with contextlib.ExitStack() as stack:
    folder = stack.enter_context(tempfile.TemporaryDirectory())
    if args.ref is not None:
      stack.enter_context(git_worktree(args.ref_commit,
                                       os.path.join(folder, "reference")))
    servers = variant_servers(args, version, folder)
    for round_number in range(args.rounds):
      # Every other round backwards, so that a drift of the machine's load
      # does not favour the variants measured first.
      for name, root, flags, _, model_dir in (
          servers if round_number % 2 == 0 else servers[::-1]):
        port = args.port or free_port()
        _common.log(f"round {round_number + 1}/{args.rounds}: {name} on "
                    f"127.0.0.1:{port} {' '.join(flags)}")
        with Server(model_dir, port, flags, root) as server:
          rounds[name].append(measure(server, histories, args))
        _common.log(f"{name} stopped")
    if args.reexport_steps:
      reexport = reexport_under_load(args, histories, metadata,
                                     stack.enter_context(
                                         tempfile.TemporaryDirectory()))

  medians = {name: variant_medians(results)
             for name, results in rounds.items()}
  headline = medians[args.variants[0]]
  reference = medians.get(REFERENCE)
  figures = {
      "p99_ms": headline["sequential"].get("p99_ms"),
      "requests_per_second": headline["load"]["requests_per_second"],
      "load_errors": total_errors(rounds),
      **reference_figures(headline["levels"],
                          reference["levels"] if reference else None),
  }
  if reexport is not None:
    figures.update(
        reexport_failed_requests=reexport["load"]["errors"],
        reexport_version_regressions=reexport["load"]["version_regressions"],
        reexport_mismatched_answers=reexport["exactness"]["mismatched"],
        reexport_new_version_answers=reexport["new_version_answers"],
        reexport_switch_margin_seconds=reexport["switch_margin_seconds"])
  by_level = {name: {level: {key: summary.get(key) for key in (
      "p50_ms", "p99_ms", "requests_per_second", "server_cpu_ms_per_request",
      "completed", "errors")}
                     for level, summary in result["levels"].items()}
              for name, result in medians.items()}
  _common.emit("serving", args, {
      "p50_ms": headline["sequential"].get("p50_ms"),
      "p90_ms": headline["sequential"].get("p90_ms"),
      "p99_ms": headline["sequential"].get("p99_ms"),
      "requests_per_second": headline["load"]["requests_per_second"],
      "p99_ms_under_load": headline["load"].get("p99_ms"),
      "headline_variant": args.variants[0],
      "by_level": by_level,
      "batching_gain": (level_ratios(medians["batched"]["levels"],
                                     medians["unbatched"]["levels"])
                        if {"batched", "unbatched"} <= set(medians)
                        else None),
      "vs_reference": ({"revision": args.ref_commit,
                        "variant": args.variants[0],
                        "ratios": level_ratios(headline["levels"],
                                               reference["levels"])}
                       if reference else None),
      "memory_mb": {name: [{key: result[key] for key in (
          "rss_mb_before", "rss_mb_after", "peak_rss_mb")}
                           for result in results]
                    for name, results in rounds.items()},
      "variants": {name: {"flags": flags, "dropped_flags": dropped,
                          "median": medians[name], "rounds": rounds[name]}
                   for name, _, flags, dropped, _ in servers},
      "reexport": reexport,
      "source": source_state,
      "history_source": source,
      "client": args.client,
      "random_fallback_reason": fallback_reason,
      "mean_history_length": float(np.mean(lengths)),
      "num_items": metadata.get("num_items"),
      "seq_len": metadata.get("seq_len"),
      "index": metadata.get("index"),
      "targets": _common.describe_targets(TARGETS),
      "meets_targets": _common.check_targets(figures, TARGETS),
  })
  return 0


if __name__ == "__main__":
  sys.exit(main())
