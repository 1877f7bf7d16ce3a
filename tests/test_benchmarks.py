"""The benchmark scripts run end to end at tiny sizes (their figures are
measured elsewhere: timing never in an assert)."""

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_training_throughput_compares_table_sizes_in_one_run():
  process = subprocess.run(
      [sys.executable, os.path.join(ROOT, "benchmarks",
                                    "train_throughput.py"),
       "--items", "300", "3000", "--steps", "4", "--warmup-steps", "2",
       "--negatives", "32", "--seq-len", "8", "--batch-size", "16",
       "--repeats", "2"],
      capture_output=True, text=True, timeout=300, cwd=ROOT, check=True)
  (line,) = process.stdout.splitlines()
  result = json.loads(line)
  assert sorted(map(int, result["by_items"])) == [300, 3000]
  for variants in result["by_items"].values():
    for variant in ("plain", "remi"):
      assert len(variants[variant]["all_samples_per_second"]) == 2
  ratios = result["remi_rate_ratio_by_items"]
  assert ratios["300"] == 1.0
  assert result["smallest_rate_ratio"] == min(ratios.values())
  assert "smallest_rate_ratio" in result["meets_targets"]
