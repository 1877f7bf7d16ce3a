"""Distributed training with real processes on 127.0.0.1, each with its
TF_CONFIG, as a cluster launcher starts them: multi-worker mirrored
training, parameter-server training with the item table sharded over the
parameter servers, a worker killed and a chief killed and restarted, their
exports, the TF_CONFIG checks, and no process left behind."""

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf

from conftest import BOOKS_SLICE, ROOT, TINY_RUN_FLAGS, pipeline_main
from remi_tf import distribute, export, layout, runs, training
from remi_tf.data.inputs import evaluation_examples

# A short run: two evaluation intervals of 100 steps (the last flag wins).
FLAGS = [*TINY_RUN_FLAGS, "--max-steps", "200", "--eval-every", "100"]
TIMEOUT = 240


def _free_ports(count):
  """`count` distinct free TCP ports of 127.0.0.1."""
  with contextlib.ExitStack() as stack:
    sockets = [stack.enter_context(socket.socket()) for _ in range(count)]
    for each in sockets:
      each.bind(("127.0.0.1", 0))
    return [each.getsockname()[1] for each in sockets]


def _cluster(**sizes):
  """{"chief": [...], "worker": [...], "ps": [...]} on free local ports."""
  ports = iter(_free_ports(sum(sizes.values())))
  return {task_type: [f"127.0.0.1:{next(ports)}" for _ in range(count)]
          for task_type, count in sizes.items() if count}


class _LocalCluster:
  """train.py with the same flags once per task of `cluster`, each with its
  TF_CONFIG and its log in `log_dir`; tasks can be killed and restarted."""

  def __init__(self, cluster, flags, cache, log_dir, **environ):
    self.cluster, self.flags, self.log_dir = cluster, flags, log_dir
    self.environ = {**os.environ, "REMI_TF_HOME": str(cache),
                    "GRPC_FAIL_FAST": "use_caller", "PYTHONUNBUFFERED": "1",
                    **environ}
    self.processes = {}
    self.pids = []

  def start(self, task, **environ):
    """Starts (or restarts) `task` = (type, index)."""
    tf_config = {"cluster": self.cluster,
                 "task": {"type": task[0], "index": task[1]}}
    with open(self.log_dir / f"{task[0]}{task[1]}.log", "a") as log:
      self.processes[task] = subprocess.Popen(
          [sys.executable, os.path.join(ROOT, "pipelines", "train.py"),
           *self.flags], stdout=log, stderr=subprocess.STDOUT, cwd=ROOT,
          env={**self.environ, **environ,
               "TF_CONFIG": json.dumps(tf_config)})
    self.pids.append(self.processes[task].pid)

  def start_all(self):
    for task_type, addresses in self.cluster.items():
      for index in range(len(addresses)):
        self.start((task_type, index))

  def kill(self, task):
    self.processes[task].send_signal(signal.SIGKILL)
    self.processes[task].wait()

  def log(self, task):
    return (self.log_dir / f"{task[0]}{task[1]}.log").read_text()

  def stop(self):
    """Kills every task still running."""
    for process in self.processes.values():
      if process.poll() is None:
        process.send_signal(signal.SIGKILL)
      process.wait()


@contextlib.contextmanager
def _running(cluster):
  """Starts every task; stops them all on the way out, and checks that no
  process it ever started is left."""
  cluster.start_all()
  try:
    yield cluster
  finally:
    cluster.stop()
    assert not _alive(cluster.pids)


def _wait_for(condition, timeout=TIMEOUT):
  """Polls `condition` until it holds."""
  deadline = time.time() + timeout
  while not condition():
    assert time.time() < deadline, "timed out"
    time.sleep(0.2)


def _alive(pids):
  """The pids of `pids` that still exist (zombies excluded)."""
  alive = []
  for pid in pids:
    try:
      with open(f"/proc/{pid}/stat") as stat:
        if stat.read().split(")")[-1].split()[0] != "Z":
          alive.append(pid)
    except FileNotFoundError:
      pass
  return alive


def _export_outputs(export_dir, raw_histories):
  """What an export answers, read with plain TensorFlow and NumPy: the user
  tower's and the retrieval model's outputs for `raw_histories` (string
  [U, n]), and the item index's embeddings and raw ids."""
  version = layout.resolve_version(str(export_dir))
  outputs = {}
  for piece in (layout.USER_TOWER, layout.RETRIEVAL):
    serve = tf.saved_model.load(layout.piece_dir(
        str(export_dir), piece, version)).signatures["serving_default"]
    for name, value in serve(history=tf.constant(raw_histories)).items():
      outputs[f"{piece}/{name}"] = value.numpy()
  index_dir = layout.piece_dir(str(export_dir), layout.ITEM_INDEX, version)
  for name in (layout.EMBEDDINGS, layout.RAW_IDS):
    outputs[name] = np.load(os.path.join(index_dir, name))
  return outputs


def _tf_config(cluster, task_type, index=0):
  return {distribute.TF_CONFIG: json.dumps(
      {"cluster": cluster, "task": {"type": task_type, "index": index}})}


PS_CLUSTER = {"chief": ["h:1"], "worker": ["h:2", "h:3"], "ps": ["h:4", "h:5"]}


def test_tasks_know_their_role():
  chief = distribute.read_task("parameter-server",
                               environ=_tf_config(PS_CLUSTER, "chief"))
  assert (chief.is_chief, chief.serves, chief.num_workers, chief.shards) == (
      True, False, 2, 2)
  for task_type in ("worker", "ps"):
    task = distribute.read_task("parameter-server", shards=3,
                                environ=_tf_config(PS_CLUSTER, task_type, 1))
    assert (task.is_chief, task.serves, task.shards) == (False, True, 3)
  workers = {"worker": ["h:1", "h:2"]}
  first, second = (distribute.read_task("multi-worker",
                                        environ=_tf_config(workers, "worker",
                                                           index))
                   for index in (0, 1))
  assert (first.is_chief, second.is_chief, first.num_workers) == (
      True, False, 2)
  assert not first.serves and not second.serves
  local = distribute.read_task("none", environ={})
  assert local.is_chief and not local.serves


def test_partitioner_shards_the_item_table_only():
  rows, dim = 5001, 16
  partitioner = distribute.item_table_partitioner(4 * (rows - 1) * dim, 3)
  assert partitioner(tf.TensorShape([rows, dim]), tf.float32) == [3, 1]
  # The towers' weights (here d x 4d and n x d) stay whole.
  for shape in ([dim, 4 * dim], [20, dim]):
    assert partitioner(tf.TensorShape(shape), tf.float32) == [1, 1]


@pytest.mark.parametrize("strategy, environ, flags, message", [
    ("parameter-server", {}, [], "needs the cluster in $TF_CONFIG"),
    ("multi-worker", {distribute.TF_CONFIG: "{nope"}, [], "not JSON"),
    ("multi-worker", _tf_config(PS_CLUSTER, "worker"), [],
     "TF_CONFIG has ps tasks"),
    ("parameter-server", _tf_config({"worker": ["h:1"], "ps": ["h:2"]},
                                    "worker"), [], "needs chief tasks"),
    ("parameter-server", _tf_config(PS_CLUSTER, "worker", 2), [],
     "task worker 2 is not in its cluster"),
    ("none", _tf_config(PS_CLUSTER, "chief"), [], "trains on one machine"),
    ("multi-worker", _tf_config({"worker": ["h:1"]}, "worker"),
     ["--ps-shards", "2"], "--ps-shards applies to"),
    ("parameter-server", _tf_config(PS_CLUSTER, "chief"),
     ["--ps-shards", "0"], "--ps-shards must be >= 1"),
    ("multi-worker", _tf_config({"worker": ["h:1", "h:2"]}, "worker"), [],
     "needs --output"),
])
def test_bad_tf_config_is_a_one_line_error(strategy, environ, flags, message,
                                           monkeypatch, capsys):
  monkeypatch.delenv(distribute.TF_CONFIG, raising=False)
  for name, value in environ.items():
    monkeypatch.setenv(name, value)
  assert pipeline_main("train.py")(["--dataset", "csv", "--strategy", strategy,
                     *flags]) == 2
  error = capsys.readouterr().err.strip()
  assert error.startswith("error: ") and "\n" not in error, error
  assert message in error


def test_mirrored_run_trains_as_the_one_machine_run(tmp_path):
  run_config = runs.resolve_config(
      "csv", BOOKS_SLICE, max_steps=40, eval_every=20, embedding_dim=16,
      negatives=64, batch_size=32)
  outcomes = []
  for strategy in ("none", "mirrored"):
    run_dir = tmp_path / strategy
    metrics = runs.train_run(run_config, str(run_dir),
                             cache_dir=str(tmp_path / "cache"),
                             task=distribute.read_task(strategy, environ={}))
    outcomes.append((metrics, training.read_history(str(run_dir))))
  (one, one_history), (mirrored, mirrored_history) = outcomes
  assert mirrored["steps"] == one["steps"] == 40
  for name, value in one["test"].items():
    assert mirrored["test"][name] == pytest.approx(value, abs=1e-6), name
  for row, mirrored_row in zip(one_history, mirrored_history, strict=True):
    for name in ("softmax_loss", "routing_entropy", "val_recall@50"):
      assert mirrored_row[name] == pytest.approx(row[name], rel=1e-4), name


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
  return tmp_path_factory.mktemp("distributed-cache")


def test_multi_worker_run_trains_as_one_machine_and_exports_once(
    tiny_run, tmp_path):
  one_machine_dir, _, cache = tiny_run
  run_dir, export_dir = tmp_path / "run", tmp_path / "export"
  flags = [*FLAGS, "--strategy", "multi-worker", "--output", str(run_dir),
           "--export-dir", str(export_dir)]
  cluster = _LocalCluster(_cluster(worker=2), flags, cache, tmp_path)
  with _running(cluster):
    codes = {task: process.wait(TIMEOUT)
             for task, process in cluster.processes.items()}
  assert codes == {("worker", 0): 0, ("worker", 1): 0}, [
      cluster.log(task)[-3000:] for task in codes]

  assert "training done" in cluster.log(("worker", 1))
  # The workers trained the halves of the one-machine batches: the same
  # losses, routing diagnostics (means over the global batch, not sums
  # over the workers) and validation metrics as the first two intervals of
  # the one-machine run, up to float rounding.
  history = training.read_history(str(run_dir))
  one_machine = training.read_history(str(one_machine_dir))[:2]
  assert [row["step"] for row in history] == [100, 200]
  for row, expected in zip(history, one_machine, strict=True):
    for name, value in expected.items():
      if name != "train_seconds":
        assert row[name] == pytest.approx(value, rel=1e-4, abs=1e-6), name
  metrics = json.loads((run_dir / training.METRICS_FILE).read_text())
  assert metrics["steps"] == 200
  # Only the chief wrote: no second worker's files or temporary folders.
  assert not [name for name in os.listdir(run_dir) if "worker" in name]
  assert layout.complete_versions(str(export_dir)) == [1]
  _, dataset, model, _ = runs.load_run(str(run_dir), str(cache))
  histories = evaluation_examples(
      dataset.test, metrics["config"]["model"]["seq_len"]).histories[:4]
  outputs = _export_outputs(
      export_dir, np.concatenate([[""], dataset.item_vocab])[histories])
  np.testing.assert_allclose(outputs["user_tower/interests"],
                             model.tower(histories)["interests"], atol=1e-5)


def test_parameter_server_run_survives_failures_and_exports_its_shards_whole(
    cache, tmp_path):
  run_dir, export_dir = tmp_path / "run", tmp_path / "export"
  flags = [*FLAGS, "--strategy", "parameter-server", "--output",
           str(run_dir), "--export-dir", str(export_dir)]
  chief, worker = ("chief", 0), ("worker", 1)
  # The chief dies (SIGKILL) once interval 2 is validated and logged,
  # before its backup; worker 1 is killed in interval 1 and restarted.
  cluster = _LocalCluster(_cluster(chief=1, worker=2, ps=2), flags, cache,
                          tmp_path, **{training.CRASH_AT: "backup-2"})
  with _running(cluster):
    _wait_for(lambda: "Epoch 1/2" in cluster.log(chief))
    time.sleep(2)
    cluster.kill(worker)
    cluster.start(worker)
    assert cluster.processes[chief].wait(TIMEOUT) == -signal.SIGKILL, (
        cluster.log(chief)[-4000:])
    assert [row["step"] for row in training.read_history(str(run_dir))] == [
        100, 200]
    # The same command on the chief resumes from the backup of interval 1.
    cluster.start(chief, **{training.CRASH_AT: ""})
    assert cluster.processes[chief].wait(TIMEOUT) == 0, (
        cluster.log(chief)[-4000:])
    servers = [task for task in cluster.processes if task[0] != "chief"]
    assert all(cluster.processes[task].poll() is None for task in servers)
  # Interval 1 was trained once, interval 2 again after the restart.
  log = cluster.log(chief)
  assert (log.count("Epoch 1/2"), log.count("Epoch 2/2")) == (1, 2), log
  assert [row["step"] for row in training.read_history(str(run_dir))] == [
      100, 200]

  # The item table was a ShardedVariable, one shard on each ps.
  line = next(line for line in log.splitlines()
              if line.startswith("item table placement: "))
  placement = json.loads(line[len("item table placement: "):])
  assert placement["type"] == "ShardedVariable"
  devices = [tf.DeviceSpec.from_string(shard["device"])
             for shard in placement["shards"]]
  assert sorted((device.job, device.task) for device in devices) == [
      ("ps", 0), ("ps", 1)]
  run_config, dataset, model, metrics = runs.load_run(str(run_dir),
                                                      str(cache))
  assert sum(shard["shape"][0] for shard in placement["shards"]) == (
      model.tower.item_embedding.embeddings.shape[0])
  assert metrics["steps"] == 200

  # The checkpoint has the one-machine layout: an unsharded model (with
  # its lazy Adam state) consumes all of it.
  fresh = training.build_model(dataset, run_config.model,
                               run_config.train.learning_rate,
                               run_config.train.seed)
  fresh.optimizer.build(fresh.trainable_variables)
  tf.train.Checkpoint(fresh).read(
      str(run_dir / training.BEST_WEIGHTS)).assert_consumed()

  # The chief's export equals a one-machine export of the same weights.
  reference_dir = tmp_path / "reference"
  export.export_model(model.tower, dataset, run_config, metrics,
                      str(reference_dir), run_id="reference")
  histories = evaluation_examples(
      dataset.test, run_config.model.seq_len).histories[:32]
  raw = np.concatenate([[""], dataset.item_vocab])[histories]
  exported = _export_outputs(export_dir, raw)
  reference = _export_outputs(reference_dir, raw)
  assert sorted(exported) == sorted(reference)
  for name, value in reference.items():
    if value.dtype.kind in "fc":
      np.testing.assert_allclose(exported[name], value, atol=1e-5,
                                 err_msg=name)
    else:
      np.testing.assert_array_equal(exported[name], value, err_msg=name)
