"""Fuzzes the HTTP service (`pipelines/serve.py`) from its own OpenAPI
document with schemathesis, every check on, over real HTTP on 127.0.0.1.

  python benchmarks/fuzz.py --model-dir saved_models/books --requests 10000
  python benchmarks/fuzz.py --model-dir saved_models/bench --requests 300

The service runs in a subprocess, with `--max-k` (the schema's bound on
k). schemathesis reads `GET /openapi.json` and runs its coverage
phase (boundary and schema-violating values of every constraint) and its
fuzzing phase (positive and negative generated requests), at most
--requests / 2 generated cases for each of the two POST operations (the GET
operations take no input, so they are asked only a few times, plus the
methods they do not allow). Checks: all of schemathesis's, e.g. no 5xx,
status codes, content types and bodies as declared, schema-valid requests
accepted, schema-violating ones rejected, 405 with `Allow` for methods not
declared.

One JSON line: the requests the service answered per endpoint and status
(from its own `/metrics`), the test cases schemathesis generated, its
failures by check (unique failures, with the operations), whether the
service still answered `/healthz` after, and its resident memory after
start-up, every --rss-every seconds of the fuzz, after it, and its peak.
"""

import argparse
import collections
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from typing import Callable, Dict

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common  # noqa: E402  (repo root on sys.path; imports remi_tf first)

import httpx  # noqa: E402
from prometheus_client import parser as prometheus_parser  # noqa: E402

# Resident memory may grow this much over a fuzz (allocator pools, caches)
# before it counts as a leak.
TARGETS = {"failures": ("<=", 0), "rss_growth_mb": ("<", 50)}


def parse_args(argv=None):
  parser = argparse.ArgumentParser(
      description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  parser.add_argument("--model-dir", required=True,
                      help="an export, e.g. saved_models/books")
  parser.add_argument("--requests", type=int, default=10_000,
                      help="generated requests in all, about (default "
                      "%(default)d)")
  parser.add_argument("--max-k", type=int, default=200,
                      help="the service's --max-k (default %(default)d)")
  parser.add_argument("--seed", type=int, default=2023)
  parser.add_argument("--workers", type=int, default=1,
                      help="schemathesis's concurrent workers")
  parser.add_argument("--timeout", type=float, default=3600.0,
                      help="seconds the fuzz may take")
  parser.add_argument("--startup-timeout", type=float, default=300.0)
  parser.add_argument("--rss-every", type=float, default=15.0,
                      help="seconds between samples of the server's "
                      "resident memory")
  args = parser.parse_args(argv)
  _common.require_positive(parser, args, ["requests", "max_k", "workers"])
  return args


def run_schemathesis(base: str, examples: int, seed: int, workers: int = 1,
                     timeout: float = 3600.0) -> dict:
  """schemathesis's JSON report of a run with every check against the
  service at `base` (its `/openapi.json`), at most `examples` generated
  cases per operation; plus "console": the end of its console output.
  It runs in a temporary folder, so that it leaves no cache behind."""
  with tempfile.TemporaryDirectory() as folder:
    report = os.path.join(folder, "report.json")
    process = subprocess.run(
        [sys.executable, "-m", "schemathesis.cli", "run",
         f"{base}/openapi.json", "--checks", "all",
         "--max-examples", str(examples), "--seed", str(seed),
         "--workers", str(workers), "--generation-database", "none",
         "--no-color", "--report", "json", "--report-json-path", report],
        cwd=folder, capture_output=True, text=True, timeout=timeout,
        check=False)
    if not os.path.exists(report):
      raise RuntimeError(f"schemathesis wrote no report:\n"
                         f"{process.stdout[-3000:]}{process.stderr[-3000:]}")
    with open(report, encoding="utf-8") as result:
      return {**json.load(result), "console": process.stdout[-3000:]}


def answered_requests(base: str) -> Dict[str, Dict[str, int]]:
  """{endpoint: {status: requests}} the service has answered, from its
  `/metrics` (`remi_requests_total`)."""
  counts = collections.defaultdict(dict)
  text = httpx.get(f"{base}/metrics", timeout=30).text
  for family in prometheus_parser.text_string_to_metric_families(text):
    for sample in family.samples:
      if sample.name == "remi_requests_total":
        counts[sample.labels["endpoint"]][sample.labels["status"]] = int(
            sample.value)
  return dict(counts)


def requests_between(before: Dict[str, Dict[str, int]],
                     after: Dict[str, Dict[str, int]]
                     ) -> Dict[str, Dict[str, int]]:
  """{endpoint: {status: requests}} answered between two
  `answered_requests` readings (zero counts left out)."""
  between = {}
  for endpoint, statuses in after.items():
    sent = {status: count - before.get(endpoint, {}).get(status, 0)
            for status, count in sorted(statuses.items())}
    sent = {status: count for status, count in sent.items() if count}
    if sent:
      between[endpoint] = sent
  return between


def failures_by_check(report: dict) -> Dict[str, dict]:
  """{"<code> <title>": {"unique": n, "operations": [...]}} of a
  schemathesis report."""
  return {f"{failure['code']} {failure['title']}":
          {"unique": failure["count"], "operations": failure["operations"]}
          for failure in report["failures"]}


@contextlib.contextmanager
def _sampled(read: Callable[[], float], every: float):
  """Yields a list that fills with (seconds since the start, read()) every
  `every` seconds, from a thread, until the block ends (and once more
  then)."""
  samples, stop, start = [], threading.Event(), time.perf_counter()

  def sample():
    while True:
      samples.append((time.perf_counter() - start, read()))
      if stop.wait(every):
        break
    samples.append((time.perf_counter() - start, read()))

  thread = threading.Thread(target=sample, daemon=True)
  thread.start()
  try:
    yield samples
  finally:
    stop.set()
    thread.join()


def main(argv=None) -> int:
  args = parse_args(argv)
  # benchmarks/serving.py's server, imported here: the tests use the rest.
  import serving  # pylint: disable=import-outside-toplevel
  with serving.Server(args.model_dir, serving.free_port(),
                      ["--max-k", str(args.max_k)]) as server:
    server.wait_ready(args.startup_timeout)
    rss_before = server.memory_mb("VmRSS")
    before = answered_requests(server.base)
    _common.log(f"fuzzing {server.base} ({args.requests} requests)")
    with _sampled(lambda: server.memory_mb("VmRSS"),
                  args.rss_every) as rss_samples:
      seconds, report = _common.timed(lambda: run_schemathesis(
          server.base, max(1, args.requests // 2), args.seed, args.workers,
          args.timeout))
    requests = requests_between(before, answered_requests(server.base))
    try:
      alive = httpx.get(f"{server.base}/healthz",
                        timeout=10).status_code == 200
    except httpx.HTTPError:
      alive = False
    rss_after = server.memory_mb("VmRSS")
    peak_rss = server.memory_mb("VmHWM")
  failures = failures_by_check(report)
  figures = {
      "failures": sum(failure["unique"] for failure in failures.values())
                  + len(report["errors"]) + (not alive),
      "rss_growth_mb": rss_after - rss_before,
  }
  met = _common.check_targets(figures, TARGETS)
  _common.emit("fuzz", args, {
      "requests_total": sum(sum(statuses.values())
                            for statuses in requests.values()),
      "requests_by_endpoint": requests,
      "test_cases": report["test_cases"],
      "failures_by_check": failures,
      "errors": report["errors"],
      "schemathesis_exit_code": report["exit_code"],
      "schemathesis_version": report["schemathesis_version"],
      "seconds": seconds,
      "alive_after": alive,
      "rss_mb_before": rss_before,
      "rss_mb_after": rss_after,
      "peak_rss_mb": peak_rss,
      "rss_mb_over_time": [[round(at, 1), round(mb, 1)]
                           for at, mb in rss_samples],
      **figures,
      "targets": _common.describe_targets(TARGETS),
      "meets_targets": met,
  })
  if failures or report["errors"]:
    _common.log(report["console"])
  return 0


if __name__ == "__main__":
  sys.exit(main())
