"""Evaluate a finished run (or an export) on its dataset's test users:
Recall, HR and NDCG at 20 and 50, exact retrieval.

  python pipelines/evaluate.py --run runs/gowalla-comirec-sa-...
  python pipelines/evaluate.py --model-dir saved_models/gowalla
"""

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from remi_tf import runs  # noqa: E402  pylint: disable=wrong-import-position


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawTextHelpFormatter)
  source = parser.add_mutually_exclusive_group(required=True)
  source.add_argument("--run", help="a finished run folder")
  source.add_argument("--model-dir", help="an export (saved_models/<name>)")
  parser.add_argument("--split", choices=("valid", "test"), default="test")
  parser.add_argument("--cache-dir", help="downloads and preprocessed data")
  args = parser.parse_args(argv)
  if args.run:
    metrics = runs.evaluate_run(args.run, args.split, args.cache_dir)
  else:
    metrics = runs.evaluate_export(args.model_dir, args.split,
                                   args.cache_dir)
  print(json.dumps(metrics, indent=2))
  return 0


if __name__ == "__main__":
  sys.exit(main())
