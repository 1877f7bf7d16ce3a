"""remi_tf.cluster and pipelines/local_cluster.py, with tests/cluster_standin.py
in place of train.py: real processes on 127.0.0.1, seconds in all."""

import glob
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from remi_tf import cluster

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STANDIN = os.path.join(ROOT, "tests", "cluster_standin.py")
LAUNCHER = os.path.join(ROOT, "pipelines", "local_cluster.py")
# Runs the real pipeline with the stand-in as its train.py.
LAUNCH_STANDIN = (
    "import sys; sys.path.insert(0, sys.argv[1]); import local_cluster; "
    "local_cluster.TRAIN_SCRIPT = sys.argv[2]; "
    "sys.exit(local_cluster.main(sys.argv[3:]))")
TIMEOUT = 60
_LAUNCHERS = []  # launcher processes the running test started


def standin(out, plan=None):
  return [sys.executable, STANDIN, "--out", str(out), "--plan",
          json.dumps(plan or {})]


def records(out):
  """{task name: [records of each start, oldest first]}."""
  found = {}
  for path in sorted(glob.glob(os.path.join(str(out), "*.json")),
                     key=os.path.getmtime):
    with open(path) as stream:
      record = json.load(stream)
    task = record["tf_config"]["task"]
    found.setdefault(f"{task['type']}-{task['index']}", []).append(record)
  return found


def pids(found):
  """Every process a stand-in was or started."""
  return [pid for starts in found.values() for record in starts
          for pid in (record["pid"], record.get("child_pid")) if pid]


def alive(pid):
  """Whether `pid` runs (a zombie, dead but not yet reaped, does not)."""
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  try:
    with open(f"/proc/{pid}/stat") as stream:
      return stream.read().rsplit(")", 1)[1].split()[0] != "Z"
  except FileNotFoundError:
    return False


def assert_all_gone(process_ids):
  deadline = time.monotonic() + 5
  while any(alive(pid) for pid in process_ids) and time.monotonic() < deadline:
    time.sleep(0.05)
  assert not [pid for pid in process_ids if alive(pid)]


def wait_for_records(out, count):
  deadline = time.monotonic() + TIMEOUT
  while sum(map(len, records(out).values())) < count:
    assert time.monotonic() < deadline, records(out)
    time.sleep(0.05)


@pytest.fixture(autouse=True)
def no_process_left(tmp_path):
  """Kills, after a test that failed, any launcher or stand-in it left
  running."""
  yield
  while _LAUNCHERS:
    _LAUNCHERS.pop().kill()
  for found in map(records, glob.glob(os.path.join(str(tmp_path), "**",
                                                   "out"), recursive=True)):
    for pid in filter(alive, pids(found)):
      os.kill(pid, signal.SIGKILL)


def run_cluster(folder, plan, workers, ps, **options):
  """Runs the stand-in cluster in `folder`; (status, records, cluster)."""
  out = folder / "out"
  out.mkdir(parents=True)
  with cluster.LocalCluster(standin(out, plan), workers, ps,
                            str(folder / "logs"), grace_seconds=2,
                            **options) as local:
    status = local.wait()
  found = records(out)
  assert_all_gone(pids(found))
  return status, found, local


def test_cluster_spec_shapes_and_tf_config():
  ps_cluster = cluster.cluster_spec(2, 2, [5001, 5002, 5003, 5004, 5005])
  assert ps_cluster == {"chief": ["127.0.0.1:5001"],
                        "worker": ["127.0.0.1:5002", "127.0.0.1:5003"],
                        "ps": ["127.0.0.1:5004", "127.0.0.1:5005"]}
  assert cluster.cluster_spec(2, 0, [5001, 5002]) == {
      "worker": ["127.0.0.1:5001", "127.0.0.1:5002"]}
  assert json.loads(cluster.tf_config(ps_cluster, "ps", 1)) == {
      "cluster": ps_cluster, "task": {"type": "ps", "index": 1}}
  assert cluster.chief_task(ps_cluster) == ("chief", 0)
  assert cluster.chief_task({"worker": ["a", "b"]}) == ("worker", 0)
  with pytest.raises(ValueError, match="5 ports needed"):
    cluster.cluster_spec(2, 2, [5001, 5002])
  with pytest.raises(ValueError, match="no task worker 2"):
    cluster.tf_config(ps_cluster, "worker", 2)
  with pytest.raises(ValueError, match=">= 1 worker"):
    cluster.cluster_spec(0, 1, [5001, 5002])


def test_free_and_consecutive_ports():
  ports = cluster.free_ports(5)
  assert len(set(ports)) == 5
  assert cluster.consecutive_ports(ports[0], 1) == ports[:1]
  with pytest.raises(ValueError, match="1..65535"):
    cluster.consecutive_ports(65535, 2)
  with cluster.socket.socket() as taken:
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    with pytest.raises(ValueError, match="not free"):
      cluster.consecutive_ports(taken.getsockname()[1], 1)


def test_train_command_adds_the_strategy_and_refuses_another():
  flags = ["--dataset", "books-sample"]
  assert cluster.train_command("train.py", flags, 2, "python") == [
      "python", "train.py", *flags, "--strategy", "parameter-server"]
  assert cluster.train_command("train.py", flags, 0, "python")[-1] == (
      "multi-worker")
  given = [*flags, "--strategy=multi-worker"]
  assert cluster.train_command("train.py", given, 0, "python") == [
      "python", "train.py", *given]
  with pytest.raises(ValueError, match="contradicts"):
    cluster.train_command("train.py", [*flags, "--strategy", "mirrored"], 0,
                          "python")


def test_every_task_gets_its_tf_config_on_distinct_ports(tmp_path):
  plan = {"chief-0": {"wait_for": 5, "exit": 0}}
  status, found, local = run_cluster(tmp_path, plan, workers=2, ps=2)
  assert status == 0
  assert sorted(found) == ["chief-0", "ps-0", "ps-1", "worker-0", "worker-1"]
  addresses = [address for group in local.cluster.values()
               for address in group]
  assert len(set(addresses)) == 5
  assert all(address.startswith("127.0.0.1:") for address in addresses)
  for name, (record,) in found.items():
    task_type, index = name.split("-")
    assert record["tf_config"] == {
        "cluster": local.cluster,
        "task": {"type": task_type, "index": int(index)}}
    # Only the coordinator fails fast on an unreachable task.
    assert record["grpc_fail_fast"] == (
        "use_caller" if task_type == "chief" else None)
  assert sorted(os.listdir(tmp_path / "logs")) == [
      "ps-0.log", "ps-1.log", "worker-0.log", "worker-1.log"]


@pytest.mark.parametrize("chief_status", [0, 7])
def test_exit_status_is_the_chiefs_and_servers_are_stopped(tmp_path,
                                                           chief_status):
  plan = {"chief-0": {"wait_for": 3, "exit": chief_status},
          "worker-0": {"spawn": True}}
  status, found, _ = run_cluster(tmp_path, plan, workers=1, ps=1)
  assert status == chief_status
  assert "child_pid" in found["worker-0"][0]  # stopped with its task


def test_peak_memory_is_reported_per_task(tmp_path):
  plan = {"ps-0": {"hold_mb": 200},
          "chief-0": {"wait_for": 3, "after": 1.0, "exit": 0}}
  status, _, local = run_cluster(tmp_path, plan, workers=1, ps=1)
  assert status == 0
  peaks = local.peak_memory_mb
  assert set(peaks) == {("chief", 0), ("worker", 0), ("ps", 0)}
  assert peaks[("ps", 0)] >= 200
  assert max(peaks[("chief", 0)], peaks[("worker", 0)]) < 100


def test_a_failing_task_stops_all_others(tmp_path):
  plan = {"ps-1": {"wait_for": 5, "exit": 4}, "chief-0": {"spawn": True}}
  status, found, _ = run_cluster(tmp_path, plan, workers=2, ps=2)
  assert status == 4
  assert len(found) == 5


def test_multi_worker_waits_for_every_worker_and_fails_with_one(tmp_path):
  plan = {"worker-0": {"wait_for": 3, "exit": 0},
          "worker-1": {"wait_for": 3, "after": 0.5, "exit": 0},
          "worker-2": {"wait_for": 3, "after": 0.5, "exit": 0}}
  status, found, local = run_cluster(tmp_path / "ok", plan, 3, 0)
  assert status == 0
  assert list(local.cluster) == ["worker"]
  assert found["worker-0"][0]["grpc_fail_fast"] is None
  plan["worker-2"] = {"wait_for": 3, "exit": 3}
  status, _, _ = run_cluster(tmp_path / "failing", plan, 3, 0)
  assert status == 3


def test_restarts_a_worker_up_to_the_limit(tmp_path):
  plan = {"worker-0": {"after": 0.2, "exit": 1}}
  status, found, _ = run_cluster(tmp_path, plan, workers=1, ps=1,
                                 restart_workers=1)
  assert status == 1
  first, second = found["worker-0"]
  assert first["tf_config"] == second["tf_config"]
  assert first["pid"] != second["pid"]
  with pytest.raises(ValueError, match="parameter-server cluster"):
    cluster.LocalCluster(["true"], 2, 0, str(tmp_path), restart_workers=1)


def launch_standin(tmp_path, launcher_flags, train_flags, plan):
  out = tmp_path / "out"
  out.mkdir()
  launcher = subprocess.Popen(
      [sys.executable, "-c", LAUNCH_STANDIN, os.path.dirname(LAUNCHER),
       STANDIN, *launcher_flags, "--grace-seconds", "2", "--",
       "--out", str(out), "--plan", json.dumps(plan), *train_flags],
      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
  _LAUNCHERS.append(launcher)
  return out, launcher


@pytest.mark.parametrize("ps, strategy", [(1, "parameter-server"),
                                          (0, "multi-worker")])
def test_pipeline_runs_train_with_the_strategy(tmp_path, ps, strategy):
  tasks = 2 + ps + (1 if ps else 0)
  chief = "chief-0" if ps else "worker-0"
  plan = {chief: {"wait_for": tasks, "exit": 0},
          "worker-1": {"wait_for": tasks, "exit": 0}}
  output = tmp_path / "run"
  out, launcher = launch_standin(
      tmp_path, ["--workers", "2", "--ps", str(ps)],
      ["--output", str(output)], plan)
  stdout, stderr = launcher.communicate(timeout=TIMEOUT)
  assert launcher.returncode == 0, stderr
  found = records(out)
  assert len(found) == tasks
  for (record,) in found.values():
    assert record["argv"][-2:] == ["--strategy", strategy]
  log_dir = output / "cluster-logs"
  assert str(log_dir) in stdout
  assert "peak resident memory per task: " in stdout and "worker 1 " in stdout
  assert "worker-1.log" in os.listdir(log_dir)
  assert_all_gone(pids(found))


@pytest.mark.parametrize("number, status", [(signal.SIGINT, 130),
                                            (signal.SIGTERM, 143)])
def test_a_signal_to_the_launcher_leaves_no_process(tmp_path, number, status):
  plan = {"worker-0": {"spawn": True}}
  out, launcher = launch_standin(tmp_path, ["--workers", "2", "--ps", "1"],
                                 [], plan)
  wait_for_records(out, 4)
  found = records(out)
  launcher.send_signal(number)
  _, stderr = launcher.communicate(timeout=TIMEOUT)
  assert launcher.returncode == status, stderr
  assert len(pids(found)) == 5
  assert_all_gone(pids(found))


@pytest.mark.parametrize("flags", [
    ["--workers", "0", "--ps", "1", "--", "--dataset", "books-sample"],
    ["--workers", "2", "--ps", "1"],
    ["--workers", "2", "--ps", "0", "--restart-workers", "1", "--",
     "--dataset", "books-sample"],
    ["--workers", "2", "--ps", "2", "--", "--strategy", "multi-worker"],
    ["--workers", "2", "--ps", "2", "--port-base", "65534", "--", "--x"],
    ["--workers", "two", "--ps", "2", "--", "--x"],
])
def test_bad_flags_give_a_one_line_error(tmp_path, flags):
  process = subprocess.run([sys.executable, LAUNCHER, *flags],
                           capture_output=True, text=True, cwd=tmp_path,
                           timeout=TIMEOUT)
  assert process.returncode == 2
  assert process.stdout == ""
  lines = process.stderr.splitlines()
  assert len(lines) == 1 and lines[0].startswith("error: "), process.stderr
