"""A TensorFlow cluster on one machine: the tasks a `TF_CONFIG` describes, run
as separate processes on 127.0.0.1, so the distributed training path can be
tried (and tested) without a cluster. No TensorFlow here.

Two shapes, the ones `pipelines/train.py --strategy` runs on:

  parameter servers (`ps` > 0): {"chief": [1], "worker": [W], "ps": [P]}
    The chief is the coordinator (it drives `fit`, checkpoints and exports);
    workers and parameter servers serve until they are stopped.
  multi-worker (`ps` == 0):     {"worker": [W]}
    Every worker trains; worker 0 is the chief. Workers finish by
    themselves.

`LocalCluster` starts one process per task, each with the same command and
its own `TF_CONFIG`, waits for the run to end and stops every process it
started: when the chief ends, when a task fails, and on Ctrl-C or SIGTERM.
Each task runs in a session of its own, so stopping a task stops its
children too, and Ctrl-C in a terminal reaches only the launcher, which
stops the tasks in order.
"""

import contextlib
import json
import logging
import os
import signal
import socket
import subprocess
import time
from typing import Dict, IO, List, Mapping, Optional, Sequence, Tuple

from remi_tf import cli

HOST = "127.0.0.1"
CHIEF, WORKER, PS = "chief", "worker", "ps"
STRATEGY_FLAG = "--strategy"
PARAMETER_SERVER, MULTI_WORKER = "parameter-server", "multi-worker"
# The coordinator's RPCs fail at once when a task is unreachable (so it can
# retry a worker's functions elsewhere) instead of waiting for it, as
# TensorFlow's parameter-server training guide sets it.
COORDINATOR_ENV = {"GRPC_FAIL_FAST": "use_caller"}
_POLL_SECONDS = 0.1

Task = Tuple[str, int]  # (task type, index)
Cluster = Dict[str, List[str]]  # task type -> "host:port" of each task

logger = logging.getLogger(__name__)


def task_count(workers: int, ps: int) -> int:
  """Processes of a cluster: the workers, the parameter servers and, when
  there are parameter servers, the chief."""
  return workers + ps + (1 if ps else 0)


def free_ports(count: int) -> List[int]:
  """`count` distinct TCP ports of 127.0.0.1 that were free a moment ago
  (the kernel's choice; held together while chosen, so they differ)."""
  with contextlib.ExitStack() as stack:
    sockets = [stack.enter_context(socket.socket()) for _ in range(count)]
    for sock in sockets:
      sock.bind((HOST, 0))
    return [sock.getsockname()[1] for sock in sockets]


def consecutive_ports(base: int, count: int) -> List[int]:
  """Ports `base .. base + count - 1`, checked free on 127.0.0.1.

  Raises:
    ValueError: a port is out of range or in use.
  """
  ports = list(range(base, base + count))
  if base < 1 or ports[-1] > 65535:
    raise ValueError(f"ports {base}..{ports[-1]} are not all in 1..65535")
  for port in ports:
    with socket.socket() as sock:
      try:
        sock.bind((HOST, port))
      except OSError as error:
        raise ValueError(f"port {port} is not free on {HOST} "
                         f"({error.strerror})") from None
  return ports


def cluster_spec(workers: int, ps: int, ports: Sequence[int]) -> Cluster:
  """The `cluster` of a `TF_CONFIG` on 127.0.0.1.

  Args:
    workers: worker tasks, >= 1.
    ps: parameter-server tasks; 0 for a multi-worker cluster (no chief).
    ports: `task_count(workers, ps)` ports, taken in the order chief,
      workers, parameter servers.

  Returns:
    {"chief": [1 address], "worker": [workers], "ps": [ps]} with parameter
    servers, else {"worker": [workers]}.

  Raises:
    ValueError: a count is out of range or `ports` has the wrong length.
  """
  if workers < 1 or ps < 0:
    raise ValueError(f"a cluster needs >= 1 worker and >= 0 parameter "
                     f"servers, not {workers} and {ps}")
  if len(ports) != task_count(workers, ps):
    raise ValueError(f"{task_count(workers, ps)} ports needed, "
                     f"{len(ports)} given")
  addresses = [f"{HOST}:{port}" for port in ports]
  if not ps:
    return {WORKER: addresses}
  return {CHIEF: addresses[:1], WORKER: addresses[1:workers + 1],
          PS: addresses[workers + 1:]}


def tf_config(cluster: Cluster, task_type: str, index: int) -> str:
  """The `TF_CONFIG` value (JSON) of one task of `cluster`.

  Raises:
    ValueError: the cluster has no such task.
  """
  if not 0 <= index < len(cluster.get(task_type, ())):
    raise ValueError(f"the cluster has no task {task_type} {index}")
  return json.dumps({"cluster": cluster,
                     "task": {"type": task_type, "index": index}})


def chief_task(cluster: Cluster) -> Task:
  """The task whose exit status is the run's: the chief, else worker 0."""
  return (CHIEF, 0) if CHIEF in cluster else (WORKER, 0)


def strategy(ps: int) -> str:
  """The `--strategy` of `pipelines/train.py` for a cluster with `ps`
  parameter servers."""
  return PARAMETER_SERVER if ps else MULTI_WORKER


def train_command(train_script: str, train_flags: Sequence[str], ps: int,
                  python: str) -> List[str]:
  """The command every task runs: `train_script` with `train_flags` and the
  strategy of the cluster's shape (added unless the flags name it).

  Raises:
    ValueError: the flags name another strategy.
  """
  wanted = strategy(ps)
  given = _flag_values(train_flags, STRATEGY_FLAG)
  for value in given:
    if value != wanted:
      raise ValueError(f"{STRATEGY_FLAG} {value} contradicts the cluster: "
                       f"{'--ps > 0' if ps else '--ps 0'} runs {wanted}")
  extra = [] if given else [STRATEGY_FLAG, wanted]
  return [python, train_script, *train_flags, *extra]


def flag_value(flags: Sequence[str], name: str) -> Optional[str]:
  """The last value of `--name VALUE` or `--name=VALUE` in `flags`, or None."""
  values = _flag_values(flags, name)
  return values[-1] if values else None


def _flag_values(flags: Sequence[str], name: str) -> List[str]:
  values = []
  for position, flag in enumerate(flags):
    if flag == name and position + 1 < len(flags):
      values.append(flags[position + 1])
    elif flag.startswith(name + "="):
      values.append(flag[len(name) + 1:])
  return values


def exit_status(returncode: int) -> int:
  """A process's exit status as a shell reports it: a death by signal N is
  128 + N."""
  return 128 - returncode if returncode < 0 else returncode


class LocalCluster:
  """The tasks of a cluster as local processes; a context manager.

  Parameter-server tasks start first, then the workers, then the chief (the
  servers are then listening when the coordinator connects). Every task runs
  `command` with `TF_CONFIG` set to its own task; the chief of a
  parameter-server cluster also gets `COORDINATOR_ENV`. The chief's output
  passes through to this process's; every other task writes to
  `<log_dir>/<type>-<index>.log`.

    with LocalCluster(command, workers=2, ps=2, log_dir="logs") as cluster:
      status = cluster.wait()

  Leaving the block (normally, by an exception, Ctrl-C, or SIGTERM, which
  the block turns into `SystemExit(143)`) stops every task still running.
  """

  def __init__(self, command: Sequence[str], workers: int, ps: int,
               log_dir: str, ports: Optional[Sequence[int]] = None,
               restart_workers: int = 0, grace_seconds: float = 10.0,
               env: Optional[Mapping[str, str]] = None):
    """Describes the cluster; nothing starts before the block is entered.

    Args:
      command: the program and arguments every task runs.
      workers, ps: task counts as `cluster_spec` takes them.
      log_dir: folder of the non-chief tasks' logs (created).
      ports: `task_count(workers, ps)` ports (default: free ones).
      restart_workers: how many times each worker of a parameter-server
        cluster is started again when it exits before the chief (its
        coordinator retries the worker's functions); 0: a worker that exits
        with an error fails the run.
      grace_seconds: how long a task has to end after SIGTERM before
        SIGKILL.
      env: the tasks' environment (default this process's); `TF_CONFIG` is
        added.

    Raises:
      ValueError: bad counts, ports, or restarts asked for without
        parameter servers.
    """
    if restart_workers < 0 or (restart_workers and not ps):
      raise ValueError("workers can be restarted only in a parameter-server "
                       "cluster (--ps > 0), a number of times >= 0")
    if grace_seconds <= 0:
      raise ValueError(f"the grace period must be > 0 s, not {grace_seconds}")
    self.cluster = cluster_spec(
        workers, ps, free_ports(task_count(workers, ps)) if ports is None
        else ports)
    self.command = list(command)
    self.log_dir = log_dir
    self.restart_workers = restart_workers
    self.grace_seconds = grace_seconds
    self._env = dict(os.environ if env is None else env)
    self._chief = chief_task(self.cluster)
    self._processes: Dict[Task, subprocess.Popen] = {}
    self._logs: Dict[Task, IO] = {}
    self._restarts: Dict[Task, int] = {}
    self._previous_sigterm = None
    # Each task's peak resident memory (MB, the largest of its restarts),
    # sampled while `wait` polls: a peak reached within the last poll
    # before a task exits is missed. Empty where /proc is missing.
    self.peak_memory_mb: Dict[Task, float] = {}

  def tasks(self) -> List[Task]:
    """Every task, in the order they start: ps, workers, chief."""
    return [(task_type, index) for task_type in (PS, WORKER, CHIEF)
            for index in range(len(self.cluster.get(task_type, ())))]

  def log_path(self, task: Task) -> str:
    """Where a non-chief task's output goes."""
    return os.path.join(self.log_dir, f"{task[0]}-{task[1]}.log")

  def __enter__(self) -> "LocalCluster":
    self._previous_sigterm = signal.signal(signal.SIGTERM, _raise_sigterm)
    try:
      os.makedirs(self.log_dir, exist_ok=True)
      for task in self.tasks():
        self._start(task)
    except BaseException:
      self.stop()
      raise
    return self

  def __exit__(self, *exc_info) -> None:
    self.stop()

  def _start(self, task: Task) -> None:
    env = dict(self._env, TF_CONFIG=tf_config(self.cluster, *task))
    output = None
    if task == self._chief:
      if PS in self.cluster:
        env.update(COORDINATOR_ENV)
    else:
      self._close_log(task)
      mode = "ab" if task in self._restarts else "wb"  # a restart appends
      output = self._logs[task] = open(self.log_path(task), mode)
    self._processes[task] = subprocess.Popen(
        self.command, env=env, stdin=subprocess.DEVNULL, stdout=output,
        stderr=subprocess.STDOUT if output else None, start_new_session=True)

  def _close_log(self, task: Task) -> None:
    log = self._logs.pop(task, None)
    if log is not None:
      log.close()

  def wait(self) -> int:
    """Waits until the run ends; returns its exit status.

    The run ends when the chief exits, and in a multi-worker cluster when
    every worker has exited too. Its status is the chief's; but a task that
    exits with an error before the end fails the run with that task's status
    (unless it is a worker that may still be restarted).
    """
    ended: Dict[Task, int] = {}
    while True:
      for task, process in self._processes.items():
        if task in ended or process.poll() is None:
          continue
        status = exit_status(process.returncode)
        if task == self._chief:
          if status != 0 or PS in self.cluster:
            logger.info("the chief exited with status %d", status)
            return status
        elif self._may_restart(task):
          self._restart(task, status)
          break
        elif status != 0:
          logger.error("%s %d failed (exit status %d), stopping the "
                       "cluster; its log: %s", *task, status,
                       self.log_path(task))
          return status
        ended[task] = status
      else:
        if len(ended) == len(self._processes):
          return 0
        self._sample_memory()
        time.sleep(_POLL_SECONDS)

  def _sample_memory(self) -> None:
    for task, process in self._processes.items():
      with contextlib.suppress(FileNotFoundError, ProcessLookupError):
        peak = cli.memory_mb("VmHWM", str(process.pid))
        self.peak_memory_mb[task] = max(peak,
                                        self.peak_memory_mb.get(task, 0.0))

  def _may_restart(self, task: Task) -> bool:
    return (task[0] == WORKER and PS in self.cluster
            and self._restarts.get(task, 0) < self.restart_workers)

  def _restart(self, task: Task, status: int) -> None:
    self._restarts[task] = self._restarts.get(task, 0) + 1
    logger.warning("%s %d exited (status %d); restarting it (%d of %d)",
                   *task, status, self._restarts[task], self.restart_workers)
    self._start(task)

  def stop(self) -> None:
    """Stops every task still running: SIGTERM to its process group, SIGKILL
    after the grace period; then restores this process's SIGTERM handler.
    Signals that arrive meanwhile are ignored, so the stop completes."""
    previous = {number: signal.signal(number, signal.SIG_IGN)
                for number in (signal.SIGINT, signal.SIGTERM)}
    try:
      running = [process for process in self._processes.values()
                 if process.poll() is None]
      for process in running:
        _signal_group(process, signal.SIGTERM)
      deadline = time.monotonic() + self.grace_seconds
      for process in running:
        try:
          process.wait(max(deadline - time.monotonic(), 0))
        except subprocess.TimeoutExpired:
          _signal_group(process, signal.SIGKILL)
          process.wait()
      for process in self._processes.values():
        _signal_group(process, signal.SIGKILL)  # children left by the task
      for task in list(self._logs):
        self._close_log(task)
    finally:
      signal.signal(signal.SIGINT, previous[signal.SIGINT])
      signal.signal(signal.SIGTERM, self._previous_sigterm
                    if self._previous_sigterm is not None
                    else previous[signal.SIGTERM])
      self._previous_sigterm = None


def _signal_group(process: subprocess.Popen, number: int) -> None:
  """Sends a signal to a task's process group (the task and its children)."""
  with contextlib.suppress(ProcessLookupError, PermissionError):
    os.killpg(process.pid, number)


def _raise_sigterm(number, frame) -> None:
  del frame
  raise SystemExit(128 + number)
