"""Run pipelines/train.py as a cluster on this machine: one process per task
on 127.0.0.1 ports, each with its own TF_CONFIG.

  python pipelines/local_cluster.py --workers 2 --ps 2 -- --dataset books-sample
  python pipelines/local_cluster.py --workers 2 --ps 0 -- --dataset books-sample

--ps > 0 runs train.py --strategy parameter-server (a chief, the workers and
the parameter servers); --ps 0 runs --strategy multi-worker (the workers,
worker 0 the chief). The flags after -- are train.py's, the same for every
task. The chief's output is shown; the other tasks' go to --log-dir. The exit
status is the chief's (a task that fails fails the run); every process
started is stopped at the end, on failure and on Ctrl-C. See
docs/distributed.md.
"""

import argparse
import logging
import os
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from remi_tf import cluster  # noqa: E402  pylint: disable=wrong-import-position

TRAIN_SCRIPT = os.path.join(ROOT, "pipelines", "train.py")
LOG_FOLDER = "cluster-logs"  # under train.py's --output, when given


class _Parser(argparse.ArgumentParser):
  """Reports a bad flag in one line (and exit status 2)."""

  def error(self, message):
    self.exit(2, f"error: {message} (see --help)\n")


def parse_args(argv):
  launcher_flags, train_flags = _split(argv)
  parser = _Parser(description=__doc__,
                   formatter_class=argparse.RawTextHelpFormatter,
                   usage="%(prog)s --workers W --ps P [options] -- "
                   "TRAIN_FLAGS")
  parser.add_argument("--workers", type=int, required=True,
                      help="worker tasks (>= 1)")
  parser.add_argument("--ps", type=int, required=True,
                      help="parameter-server tasks; 0 for multi-worker")
  parser.add_argument("--port-base", type=int, metavar="N",
                      help="use ports N, N+1, ... "
                      "(chief, workers, ps; default: free ports)")
  parser.add_argument("--log-dir", help="the workers' and parameter servers' "
                      "logs (default: <--output>/cluster-logs\nwhen the "
                      "train flags name --output, else a new temporary "
                      "folder)")
  parser.add_argument("--restart-workers", type=int, default=0, metavar="N",
                      help="start a parameter-server run's worker again when "
                      "it dies, up to N\ntimes each (default 0: a failing "
                      "worker fails the run)")
  parser.add_argument("--grace-seconds", type=float, default=10.0,
                      metavar="SECONDS",
                      help="time a task has to stop after SIGTERM before "
                      "SIGKILL (default 10)")
  args = parser.parse_args(launcher_flags)
  if args.workers < 1 or args.ps < 0:
    parser.error(f"--workers must be >= 1 and --ps >= 0, not {args.workers} "
                 f"and {args.ps}")
  if not train_flags:
    parser.error("give train.py's flags after --, e.g. -- --dataset "
                 "books-sample")
  args.train_flags = train_flags
  return parser, args


def _split(argv):
  """(the launcher's flags, train.py's flags): the parts before and after the
  first `--`."""
  if "--" not in argv:
    return argv, []
  position = argv.index("--")
  return argv[:position], argv[position + 1:]


def main(argv=None) -> int:
  logging.basicConfig(level=logging.WARNING, format="%(message)s")
  logging.getLogger("remi_tf").setLevel(logging.INFO)
  parser, args = parse_args(sys.argv[1:] if argv is None else list(argv))
  try:
    command = cluster.train_command(TRAIN_SCRIPT, args.train_flags, args.ps,
                                    sys.executable)
    count = cluster.task_count(args.workers, args.ps)
    ports = (None if args.port_base is None
             else cluster.consecutive_ports(args.port_base, count))
    log_dir = args.log_dir or _default_log_dir(args.train_flags)
    local = cluster.LocalCluster(
        command, args.workers, args.ps, log_dir, ports=ports,
        restart_workers=args.restart_workers,
        grace_seconds=args.grace_seconds)
  except ValueError as error:
    parser.error(str(error))
  print(f"cluster ({cluster.strategy(args.ps)}): " + "; ".join(
      f"{task_type} {', '.join(addresses)}"
      for task_type, addresses in local.cluster.items()), flush=True)
  print(f"logs of the tasks other than the chief: {log_dir}", flush=True)
  try:
    with local:
      status = local.wait()
  except KeyboardInterrupt:
    print("interrupted: every task stopped", file=sys.stderr)
    return 130
  if local.peak_memory_mb:
    print("peak resident memory per task: " + "; ".join(
        f"{task_type} {index} {megabytes:,.0f} MB" for (task_type, index),
        megabytes in sorted(local.peak_memory_mb.items())), flush=True)
  return status


def _default_log_dir(train_flags) -> str:
  output = cluster.flag_value(train_flags, "--output")
  if output is None:
    return tempfile.mkdtemp(prefix="remi-tf-cluster-")
  return os.path.join(output, LOG_FOLDER)


if __name__ == "__main__":
  sys.exit(main())
