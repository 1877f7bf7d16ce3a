"""Export a finished run's best model as the next version of an export
folder (user tower for TF Serving, ScaNN item index, end-to-end retrieval
model, metadata).

  python pipelines/export.py --run runs/gowalla-comirec-sa-20261126-120000 \
      --export-dir saved_models/gowalla
"""

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from remi_tf import cli  # noqa: E402  pylint: disable=wrong-import-position
cli.configure_logging()  # reads --verbose; must run before TensorFlow loads
from remi_tf import layout, runs  # noqa: E402  pylint: disable=wrong-import-position
from remi_tf.data import INPUT_ERRORS  # noqa: E402  pylint: disable=wrong-import-position


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawTextHelpFormatter)
  parser.add_argument("--run", required=True, help="a finished run folder")
  parser.add_argument("--export-dir", help="default saved_models/<dataset>")
  cli.add_cache_flag(parser)
  cli.add_verbose_flag(parser)
  args = parser.parse_args(argv)
  config_path = os.path.join(args.run, "config.json")
  if not os.path.isfile(config_path):
    print(f"error: {args.run} is not a run folder (no config.json)",
          file=sys.stderr)
    return 2
  try:
    with open(config_path) as stored:
      dataset = json.load(stored)["dataset"]
    export_dir = args.export_dir or os.path.join("saved_models", dataset)
    metadata = runs.export_run(args.run, export_dir, args.cache_dir)
  except (*INPUT_ERRORS, KeyError, layout.ModelFolderError) as error:
    print(f"error: {error}", file=sys.stderr)
    return 2
  print(json.dumps({"export_dir": export_dir, "version": metadata["version"],
                    "index": metadata["index"]}, indent=2))
  return 0


if __name__ == "__main__":
  sys.exit(main())
