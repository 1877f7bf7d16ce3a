"""Distributed training with `tf.distribute`: which strategy a run uses,
which task of the cluster this process is, and the servers of a
parameter-server cluster.

The cluster comes from `TF_CONFIG`, as every TensorFlow cluster launcher
sets it, and the same command runs on every task:

- "none": one process, no strategy; "mirrored": `MirroredStrategy` over the
  local devices. Neither reads a cluster.
- "multi-worker": `MultiWorkerMirroredStrategy`, synchronous data
  parallelism; the cluster has "worker" tasks (and optionally a "chief"),
  every task trains, the chief (worker 0 without a "chief" task) writes.
- "parameter-server": `ParameterServerStrategy`; the "chief" drives `fit`,
  validates, checkpoints and exports; "worker" and "ps" tasks only serve
  (`serve`). The item table is sharded across the parameter servers.
"""

import dataclasses
import json
import logging
import os
from typing import Dict, List, Mapping, Optional

import tensorflow as tf

STRATEGIES = ("none", "mirrored", "multi-worker", "parameter-server")
TF_CONFIG = "TF_CONFIG"
# The task types each cluster strategy accepts in TF_CONFIG's cluster.
_TASK_TYPES = {"multi-worker": ("chief", "worker"),
               "parameter-server": ("chief", "worker", "ps")}

logger = logging.getLogger(__name__)


class ClusterError(ValueError):
  """TF_CONFIG is malformed or does not fit the strategy (or shard count)."""


@dataclasses.dataclass(frozen=True)
class Task:
  """The strategy of a run and this process's task in its cluster.

  Attributes:
    strategy: one of `STRATEGIES`.
    task_type: "chief", "worker" or "ps"; None on one machine.
    index: the task's index among the tasks of its type.
    cluster: task type -> ["host:port", ...] (empty on one machine).
    shards: shards of the item table (parameter-server only, else 1).
  """

  strategy: str = "none"
  task_type: Optional[str] = None
  index: int = 0
  cluster: Mapping[str, List[str]] = dataclasses.field(default_factory=dict)
  shards: int = 1

  @property
  def num_workers(self) -> int:
    """Tasks that compute training steps (multi-worker: chief included)."""
    workers = len(self.cluster.get("worker", []))
    if self.strategy == "multi-worker":
      return workers + len(self.cluster.get("chief", []))
    return workers

  @property
  def is_chief(self) -> bool:
    """Whether this task writes the run's files: the only task on one
    machine, the "chief", or worker 0 of a multi-worker cluster without one.
    """
    if self.task_type is None or self.task_type == "chief":
      return True
    return (self.strategy == "multi-worker" and "chief" not in self.cluster
            and self.task_type == "worker" and self.index == 0)

  @property
  def serves(self) -> bool:
    """Whether this task only serves (a parameter-server worker or ps)."""
    return self.strategy == "parameter-server" and self.task_type in (
        "worker", "ps")


LOCAL = Task()


def read_task(strategy: str, shards: Optional[int] = None,
              environ: Optional[Mapping[str, str]] = None) -> Task:
  """This process's task, from the strategy's name and `$TF_CONFIG`.

  Args:
    strategy: one of `STRATEGIES`.
    shards: item-table shards for "parameter-server" (default: one per
      parameter server); must be None for the other strategies.
    environ: the environment (default `os.environ`).

  Raises:
    ClusterError: an unknown strategy, a malformed TF_CONFIG, a cluster the
      strategy cannot use, or a shard count that does not apply.
  """
  if strategy not in STRATEGIES:
    raise ClusterError(f"unknown strategy {strategy!r}; choose one of "
                       f"{', '.join(STRATEGIES)}")
  environ = os.environ if environ is None else environ
  if shards is not None and strategy != "parameter-server":
    raise ClusterError("--ps-shards applies to --strategy parameter-server "
                       f"only, not {strategy}")
  if strategy in ("none", "mirrored"):
    cluster = _parse_tf_config(environ[TF_CONFIG])[0] if environ.get(
        TF_CONFIG) else {}
    if sum(len(addresses) for addresses in cluster.values()) > 1:
      raise ClusterError(f"TF_CONFIG describes a cluster, but --strategy "
                         f"{strategy} trains on one machine; use "
                         "multi-worker or parameter-server")
    return Task(strategy=strategy)
  if not environ.get(TF_CONFIG):
    raise ClusterError(f"--strategy {strategy} needs the cluster in "
                       "$TF_CONFIG (none is set)")
  cluster, task_type, index = _parse_tf_config(environ[TF_CONFIG])
  allowed = _TASK_TYPES[strategy]
  unknown = sorted(set(cluster) - set(allowed))
  if unknown:
    raise ClusterError(f"TF_CONFIG has {', '.join(unknown)} tasks, which "
                       f"--strategy {strategy} does not use (it takes "
                       f"{', '.join(allowed)})")
  if len(cluster.get("chief", [])) > 1:
    raise ClusterError("TF_CONFIG has more than one chief")
  if strategy == "multi-worker":
    return Task(strategy, task_type, index, cluster)
  for required in ("chief", "worker", "ps"):
    if not cluster.get(required):
      raise ClusterError(f"--strategy parameter-server needs {required} "
                         "tasks in TF_CONFIG's cluster (it has "
                         f"{', '.join(sorted(cluster))})")
  shards = len(cluster["ps"]) if shards is None else shards
  if shards < 1:
    raise ClusterError(f"--ps-shards must be >= 1, got {shards}")
  return Task(strategy, task_type, index, cluster, shards)


def _parse_tf_config(text: str):
  """(cluster, task type, task index) of a TF_CONFIG JSON string.

  Raises:
    ClusterError: not JSON, or not {"cluster": {type: [address, ...]},
      "task": {"type": type, "index": i}} with the task in the cluster.
  """
  try:
    payload = json.loads(text)
  except ValueError as error:
    raise ClusterError(f"TF_CONFIG is not JSON: {error}") from None
  cluster = payload.get("cluster") if isinstance(payload, dict) else None
  task = payload.get("task") if isinstance(payload, dict) else None
  if not isinstance(cluster, dict) or not cluster or not all(
      isinstance(addresses, list) and addresses and
      all(isinstance(address, str) for address in addresses)
      for addresses in cluster.values()):
    raise ClusterError('TF_CONFIG needs "cluster": {task type: '
                       '["host:port", ...]}')
  if not isinstance(task, dict) or not isinstance(task.get("index", 0), int):
    raise ClusterError('TF_CONFIG needs "task": {"type": ..., "index": ...}')
  task_type, index = task.get("type"), task.get("index", 0)
  if task_type not in cluster or not 0 <= index < len(cluster[task_type]):
    raise ClusterError(f"TF_CONFIG's task {task_type} {index} is not in its "
                       f"cluster ({', '.join(sorted(cluster))})")
  return cluster, task_type, index


def item_table_partitioner(table_bytes: int, shards: int):
  """A partitioner that cuts the item table into `shards` shards and leaves
  every variable smaller than half of it whole.

  `MinSizePartitioner` makes min(max_shards, bytes // min_shard_bytes)
  shards (at least one); with min_shard_bytes = table_bytes // shards the
  table gets exactly `shards`, and the towers' small dense weights one.

  Args:
    table_bytes: size of the item table, [N, d] float32: 4 N d.
    shards: shards of the table.
  """
  return tf.distribute.experimental.partitioners.MinSizePartitioner(
      min_shard_bytes=max(table_bytes // shards, 1), max_shards=shards)


def make_strategy(task: Task, table_bytes: int) -> tf.distribute.Strategy:
  """The `tf.distribute` strategy of `task` (the default strategy for
  "none"). Create it before any other TensorFlow work of the process
  (multi-worker configures collective ops, which must come first).

  Args:
    task: this process's task (`read_task`).
    table_bytes: size of the item table (for the parameter servers' shards).
  """
  if task.strategy == "none":
    return tf.distribute.get_strategy()
  if task.strategy == "mirrored":
    return tf.distribute.MirroredStrategy()
  resolver = tf.distribute.cluster_resolver.TFConfigClusterResolver()
  if task.strategy == "multi-worker":
    return tf.distribute.MultiWorkerMirroredStrategy(cluster_resolver=resolver)
  _ensure_inter_op_threads(task)
  # The coordinator's calls to a lost worker fail at once and are retried
  # on another, instead of waiting for the worker (TensorFlow's advice for
  # parameter-server fault tolerance).
  os.environ.setdefault("GRPC_FAIL_FAST", "use_caller")
  return tf.distribute.experimental.ParameterServerStrategy(
      resolver, variable_partitioner=item_table_partitioner(table_bytes,
                                                            task.shards))


def _inter_op_threads(task: Task) -> int:
  """Threads a parameter-server task needs: the coordinator keeps one call
  in flight per worker, and a task with fewer threads than that can hang
  (as TensorFlow's own in-process clusters configure)."""
  return max(os.cpu_count() or 1, task.num_workers + 1)


def _ensure_inter_op_threads(task: Task) -> None:
  """Gives the coordinator enough inter-op threads (if TensorFlow has not
  started its runtime yet, which fixes the count)."""
  try:
    tf.config.threading.set_inter_op_parallelism_threads(
        _inter_op_threads(task))
  except RuntimeError:
    logger.warning("TensorFlow already initialized: inter-op threads not set")


def serve(task: Task) -> None:
  """Runs this parameter-server worker or ps task's server; never returns
  (the cluster's launcher stops it when the chief is done).

  Raises:
    ClusterError: the task does not serve.
  """
  if not task.serves:
    raise ClusterError(f"task {task.task_type} {task.index} of "
                       f"{task.strategy} does not serve")
  config = tf.compat.v1.ConfigProto(
      inter_op_parallelism_threads=_inter_op_threads(task))
  server = tf.distribute.Server(
      tf.train.ClusterSpec(dict(task.cluster)), job_name=task.task_type,
      task_index=task.index, protocol="grpc", config=config, start=True)
  logger.info("%s %d serving at %s", task.task_type, task.index,
              task.cluster[task.task_type][task.index])
  server.join()


def describe_placement(variable) -> Dict[str, object]:
  """Where a (possibly sharded) variable lives, for logs and tests.

  Returns:
    {"type": class name, "shards": [{"shape": [...], "device": ...}, ...]}.
  """
  parts = getattr(variable, "variables", None) or [variable]
  return {"type": type(variable).__name__,
          "shards": [{"shape": part.shape.as_list(), "device": part.device}
                     for part in parts]}
