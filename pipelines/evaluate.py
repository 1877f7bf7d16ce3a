"""Evaluate a finished run (or an export) on its dataset's test users:
Recall, HR and NDCG at 20 and 50, exact retrieval.

  python pipelines/evaluate.py --run runs/gowalla-comirec-sa-...
  python pipelines/evaluate.py --model-dir saved_models/gowalla
  python pipelines/evaluate.py --model-dir saved_models/books \
      --raw-file data/interactions.csv.gz

An export names the raw file it was trained on only by name and SHA-256:
give a local copy with --raw-file (its content is checked); downloaded
datasets are downloaded again (through the cache).
"""

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from remi_tf import cli  # noqa: E402  pylint: disable=wrong-import-position
cli.configure_logging()  # reads --verbose; must run before TensorFlow loads
from remi_tf import export_evaluation, layout, runs  # noqa: E402  pylint: disable=wrong-import-position
from remi_tf.data import INPUT_ERRORS  # noqa: E402  pylint: disable=wrong-import-position


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawTextHelpFormatter)
  source = parser.add_mutually_exclusive_group(required=True)
  source.add_argument("--run", help="a finished run folder")
  source.add_argument("--model-dir", help="an export (saved_models/<name>)")
  parser.add_argument("--version", type=int,
                      help="with --model-dir: the export version (default "
                      "the newest)")
  parser.add_argument("--raw-file", help="with --model-dir: a local copy of "
                      "the raw file the export was trained on")
  parser.add_argument("--split", choices=("valid", "test"), default="test")
  cli.add_cache_flag(parser)
  cli.add_verbose_flag(parser)
  args = parser.parse_args(argv)
  if args.run and (args.version is not None or args.raw_file):
    parser.error("--version and --raw-file go with --model-dir")
  try:
    if args.run:
      metrics = runs.evaluate_run(args.run, args.split, args.cache_dir)
    else:
      metrics = export_evaluation.evaluate_export(
          args.model_dir, args.split, args.raw_file, args.cache_dir,
          args.version)
  except (*INPUT_ERRORS, layout.ModelFolderError) as error:
    print(f"error: {error}", file=sys.stderr)
    return 2
  print(json.dumps(metrics, indent=2))
  return 0


if __name__ == "__main__":
  sys.exit(main())
