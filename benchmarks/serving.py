"""Latency and throughput of the HTTP service (`pipelines/serve.py`) over
real HTTP on 127.0.0.1.

Starts `pipelines/serve.py --model-dir DIR --host 127.0.0.1 --port P` (a
free port unless --port is given) as a subprocess, waits for /healthz, and
always terminates it at the end (also on errors and Ctrl-C). Request
histories are real users' histories (raw ids) of the dataset the export
was trained on (rebuilt from its metadata through --cache-dir, and
--raw-file for a local raw file: test users,
then validation and training users); if the dataset cannot be loaded (or
with --random-histories) they are random raw ids from
item_index/<v>/raw_ids.npy, which the JSON records.

  (a) sequential: --warmup-requests untimed, then --requests single
      `POST /v1/recommend {"history": [...], "k": --k}` one after the
      other from one httpx.Client; p50/p90/p99 latency in ms.
  (b) under load: --concurrency threads, each with its own httpx.Client,
      sharing --load-requests requests in total; requests/s (completed
      requests / wall time) and latency percentiles.

The client runs on the same machine as the server (2 cores: client and
server compete for them, so the figures are a lower bound of the server).

Targets (2 cores): p99 < 10 ms sequential; >= 300 requests/s at
concurrency 8.

  python benchmarks/serving.py --model-dir saved_models/gowalla
  python benchmarks/serving.py --model-dir saved_models/bench \
      --requests 200 --load-requests 400

(saved_models/bench: the small export made in benchmarks/README.md.)

Prints progress on stderr and one JSON line on stdout.
"""

import argparse
import itertools
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common  # noqa: E402  (repo root on sys.path; imports remi_tf first)

import numpy as np  # noqa: E402

from remi_tf import layout  # noqa: E402

TARGETS = {"p99_ms": ("<", 10.0), "requests_per_second": (">=", 300.0)}
SERVE = os.path.join(_common.ROOT, "pipelines", "serve.py")


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
  parser.add_argument("--timeout", type=float, default=30.0,
                      help="seconds per request")
  parser.add_argument("--startup-timeout", type=float, default=300.0,
                      help="seconds to wait for /healthz")
  parser.add_argument("--seed", type=int, default=2023)
  args = parser.parse_args(argv)
  _common.require_positive(
      parser, args, ("k", "requests", "concurrency", "load_requests"))
  return args


def free_port() -> int:
  with socket.socket() as sock:
    sock.bind(("127.0.0.1", 0))
    return sock.getsockname()[1]


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


class Server:
  """pipelines/serve.py in a subprocess on 127.0.0.1, its output in a
  temporary file; a context manager that always terminates it."""

  def __init__(self, model_dir: str, port: int):
    self.port = port
    self.base = f"http://127.0.0.1:{port}"
    self._output = tempfile.TemporaryFile(mode="w+")
    self._process = subprocess.Popen(
        [sys.executable, SERVE, "--model-dir", os.path.abspath(model_dir),
         "--host", "127.0.0.1", "--port", str(port)],
        cwd=_common.ROOT, stdout=self._output, stderr=subprocess.STDOUT,
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

  def peak_rss_mb(self) -> float:
    """The server process's peak resident memory so far."""
    from remi_tf import cli  # pylint: disable=g-import-not-at-top
    return cli.memory_mb("VmHWM", str(self._process.pid))

  def stop(self) -> None:
    if self._process.poll() is None:
      self._process.terminate()
      try:
        self._process.wait(timeout=30)
      except subprocess.TimeoutExpired:
        self._process.kill()
        self._process.wait()
    self._output.close()


class Tally:
  """Latencies of successful requests and the errors (thread-safe enough:
  one Tally per thread, merged at the end)."""

  def __init__(self):
    self.seconds, self.errors, self.first_error = [], 0, None
    self.items = []

  def send(self, client, history, k):
    start = time.perf_counter()
    try:
      response = client.post("/v1/recommend",
                             json={"history": history, "k": k})
      elapsed = time.perf_counter() - start
      if response.status_code != 200:
        raise RuntimeError(f"HTTP {response.status_code}: "
                           f"{response.text[:200]}")
      self.items.append(len(response.json()["items"]))
      self.seconds.append(elapsed)
    except Exception as error:  # pylint: disable=broad-except
      self.errors += 1
      if self.first_error is None:
        self.first_error = f"{type(error).__name__}: {error}"

  @classmethod
  def merge(cls, tallies):
    merged = cls()
    for tally in tallies:
      merged.seconds += tally.seconds
      merged.items += tally.items
      merged.errors += tally.errors
      merged.first_error = merged.first_error or tally.first_error
    return merged

  def summary(self, wall_seconds: float) -> dict:
    return {"completed": len(self.seconds), "errors": self.errors,
            "first_error": self.first_error,
            "wall_seconds": wall_seconds,
            "requests_per_second": len(self.seconds) / wall_seconds,
            "mean_items_returned": float(np.mean(self.items))
                                   if self.items else None,
            **_common.latency_summary(self.seconds)}


def sequential(base, histories, args) -> dict:
  """(a): one client, one request at a time."""
  import httpx  # pylint: disable=g-import-not-at-top
  with httpx.Client(base_url=base, timeout=args.timeout) as client:
    warm = Tally()
    for i in range(args.warmup_requests):
      warm.send(client, histories[i % len(histories)], args.k)
    if warm.errors:
      raise RuntimeError(f"warm-up requests failed: {warm.first_error}")
    tally = Tally()
    start = time.perf_counter()
    for i in range(args.requests):
      tally.send(client, histories[(args.warmup_requests + i)
                                   % len(histories)], args.k)
    return tally.summary(time.perf_counter() - start)


def under_load(base, histories, args) -> dict:
  """(b): --concurrency threads with their own clients share
  --load-requests requests."""
  import httpx  # pylint: disable=g-import-not-at-top
  counter = itertools.count()
  clients = [httpx.Client(base_url=base, timeout=args.timeout)
             for _ in range(args.concurrency)]
  tallies = [Tally() for _ in clients]
  ready = threading.Barrier(args.concurrency + 1)

  def worker(client, tally):
    ready.wait()
    while True:
      i = next(counter)  # atomic under the GIL
      if i >= args.load_requests:
        return
      tally.send(client, histories[i % len(histories)], args.k)

  threads = [threading.Thread(target=worker, args=pair, daemon=True)
             for pair in zip(clients, tallies)]
  try:
    for thread in threads:
      thread.start()
    ready.wait()
    start = time.perf_counter()
    for thread in threads:
      thread.join()
    wall = time.perf_counter() - start
  finally:
    for client in clients:
      client.close()
  return {"concurrency": args.concurrency,
          **Tally.merge(tallies).summary(wall)}


def main(argv=None) -> int:
  args = parse_args(argv)
  metadata = _common.export_metadata(args.model_dir)
  histories, source, fallback_reason = request_histories(args, metadata)
  lengths = [len(h) for h in histories]
  _common.log(f"{len(histories)} request histories ({source}), mean length "
              f"{np.mean(lengths):.1f}")

  port = args.port or free_port()
  _common.log(f"starting serve.py on 127.0.0.1:{port}")
  with Server(args.model_dir, port) as server:
    startup = server.wait_ready(args.startup_timeout)
    _common.log(f"ready after {startup:.1f}s")
    single = sequential(server.base, histories, args)
    _common.log(f"sequential: {single['completed']} requests, p50 "
                f"{single.get('p50_ms', float('nan')):.2f} ms, p99 "
                f"{single.get('p99_ms', float('nan')):.2f} ms, "
                f"{single['errors']} errors")
    load = under_load(server.base, histories, args)
    _common.log(f"concurrency {args.concurrency}: {load['completed']} "
                f"requests, {load['requests_per_second']:,.0f} req/s, p99 "
                f"{load.get('p99_ms', float('nan')):.2f} ms, "
                f"{load['errors']} errors")
  _common.log("server stopped")

  figures = {"p99_ms": single.get("p99_ms"),
             "requests_per_second": load["requests_per_second"]}
  _common.emit("serving", args, {
      "p50_ms": single.get("p50_ms"), "p90_ms": single.get("p90_ms"),
      "p99_ms": single.get("p99_ms"),
      "requests_per_second": load["requests_per_second"],
      "p99_ms_under_load": load.get("p99_ms"),
      "sequential": single, "load": load,
      "startup_seconds": startup,
      "history_source": source,
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
