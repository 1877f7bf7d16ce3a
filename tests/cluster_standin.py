"""A stand-in for pipelines/train.py in the local-cluster tests: a task that
records what it was started with, then does what the plan says.

  python tests/cluster_standin.py --out DIR --plan JSON [any other flags]

It writes DIR/<type>-<index>.<pid>.json: its pid, argv, TF_CONFIG and
GRPC_FAIL_FAST (and the pid of a child it started, with "spawn"). The plan
maps "<type>-<index>" to what that task does:
  {"exit": code, "after": seconds, "wait_for": n, "spawn": true,
   "hold_mb": m}
exit with `code` after `seconds`, or once DIR holds `n` records; start a
child that sleeps first; hold m MB of touched memory from the start. A task without an entry serves (sleeps) until it
is stopped, as a tf.distribute.Server does.
"""

import argparse
import glob
import json
import os
import subprocess
import sys
import time

SERVE_SECONDS = 600


def main() -> int:
  parser = argparse.ArgumentParser()
  parser.add_argument("--out", required=True)
  parser.add_argument("--plan", default="{}")
  args, _ = parser.parse_known_args()
  config = json.loads(os.environ["TF_CONFIG"])
  name = f"{config['task']['type']}-{config['task']['index']}"
  plan = json.loads(args.plan).get(name, {})
  held = b"\1" * (plan.get("hold_mb", 0) << 20)  # written, so resident
  record = {"pid": os.getpid(), "argv": sys.argv[1:], "tf_config": config,
            "grpc_fail_fast": os.environ.get("GRPC_FAIL_FAST")}
  if plan.get("spawn"):
    child = subprocess.Popen([sys.executable, "-c", "import time; "
                              f"time.sleep({SERVE_SECONDS})"])
    record["child_pid"] = child.pid
  path = os.path.join(args.out, f"{name}.{os.getpid()}.json")
  with open(path + ".tmp", "w") as stream:
    json.dump(record, stream)
  os.replace(path + ".tmp", path)
  if "exit" not in plan:
    time.sleep(SERVE_SECONDS)
    return 0
  if "wait_for" in plan:
    while len(glob.glob(os.path.join(args.out, "*.json"))) < plan["wait_for"]:
      time.sleep(0.05)
  time.sleep(plan.get("after", 0))
  del held
  return plan["exit"]


if __name__ == "__main__":
  sys.exit(main())
