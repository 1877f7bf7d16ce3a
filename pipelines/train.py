"""Train, evaluate and export a multi-interest retrieval model.

  python pipelines/train.py --dataset gowalla --raw-file PATH
  python pipelines/train.py --dataset csv --raw-file my_log.csv --beta 0 --rr-lambda 0

Defaults are the paper's, per dataset and model (remi_tf/config.py); every
numeric flag is range-checked before anything is written. --config FILE
reads settings from a JSON file (keys: the flags below with underscores,
e.g. the one pipelines/tune.py writes); a flag given on the command line
overrides the file, and the file overrides the defaults. Running the same
command again resumes an interrupted run where it stopped (training, test
evaluation or export), and says so when the run is complete.

On a cluster (docs/distributed.md) the same command runs on every task, with
the task in $TF_CONFIG:

  python pipelines/train.py --dataset gowalla --strategy parameter-server

the chief trains, validates, writes the run and exports; workers and
parameter servers serve until the launcher stops them.
"""

import argparse
import json
import logging
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from remi_tf import cli  # noqa: E402  pylint: disable=wrong-import-position
cli.configure_logging()  # reads --verbose; must run before TensorFlow loads
from remi_tf import config, distribute, layout, runs, threads  # noqa: E402  pylint: disable=wrong-import-position
from remi_tf.data import INPUT_ERRORS  # noqa: E402  pylint: disable=wrong-import-position


def parse_args(argv=None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawTextHelpFormatter)
  cli.add_dataset_flags(parser, required=False)
  cli.add_config_flag(parser, "JSON object of settings (keys: these flags "
                      "with underscores,\ne.g. rr_lambda); flags given here "
                      "override it")
  remi_models = ", ".join(config.REMI_MODELS)
  parser.add_argument("--model", choices=config.MODELS, default=None,
                      help=f"user tower (default comirec-sa). {remi_models} "
                      "train as REMI unless\n--beta and --rr-lambda say "
                      "otherwise (--beta 0 --rr-lambda 0: the tower as\n"
                      "published); the others default to the plain sampled "
                      "softmax")
  parser.add_argument("--interests", type=int, help="K (default 4)")
  parser.add_argument("--embedding-dim", type=int, help="d (default 64)")
  parser.add_argument("--embedding-init", choices=config.EMBEDDING_INITS,
                      help="item-embedding initializer (default glorot, as "
                      "the original ComiRec; he as the REMI reference code)")
  parser.add_argument("--seq-len", type=int, help="history length "
                      "(default per dataset)")
  parser.add_argument("--threshold", type=int, help="item/user filter "
                      "(default per dataset)")
  parser.add_argument("--beta", type=float, help="IHN sharpness (default: "
                      f"the dataset's for {remi_models},\n0 for the others; "
                      "0 = plain sampled softmax)")
  parser.add_argument("--rr-lambda", type=float,
                      help="routing regularization weight (default "
                      f"{config.REMI_RR_LAMBDA:g} for {remi_models},\n0 for "
                      "the others)")
  parser.add_argument("--negatives", type=int, help="sampled negatives per "
                      "batch (default 1280)")
  parser.add_argument("--sampler", choices=config.SAMPLERS,
                      help="negative sampler (default uniform)")
  parser.add_argument("--candidate-scoring", choices=config.CANDIDATE_SCORINGS,
                      help="positive-interest (default): every candidate "
                      "scored by the\ninterest closest to the positive; "
                      "max-interest: each by its own\nclosest interest "
                      "(UMI's harder negatives)")
  parser.add_argument("--batch-size", type=int, help="default 128")
  parser.add_argument("--learning-rate", type=float, help="Adam, default 1e-3")
  parser.add_argument("--optimizer", choices=config.OPTIMIZERS,
                      help="lazy-adam (default: sparse row updates of the "
                      "item table) or adam (dense)")
  parser.add_argument("--max-steps", type=int, help="default 1,000,000")
  parser.add_argument("--eval-every", type=int, help="steps between "
                      "validations (default 1000)")
  parser.add_argument("--patience", type=int, help="validations without "
                      "improvement before stopping (default 50)")
  parser.add_argument("--seed", type=int, help="default 2023")
  parser.add_argument("--eval-users", type=int, help="validate and test on "
                      "this many users of each split, a seeded\nrandom "
                      "sample (default: all, as the protocol; for catalogs "
                      "of millions)")
  parser.add_argument("--strategy", choices=distribute.STRATEGIES,
                      default="none", help="tf.distribute strategy (default "
                      "none); multi-worker and parameter-server\nread the "
                      "cluster and this task from $TF_CONFIG")
  parser.add_argument("--ps-shards", type=int, help="item-table shards with "
                      "--strategy parameter-server (default: one\nper "
                      "parameter server)")
  parser.add_argument("--output", help="run folder (default: the newest "
                      "run of the same configuration\nunder runs/, else "
                      "runs/<dataset>-<model>-<time>)")
  parser.add_argument("--export-dir", help="default saved_models/<dataset>")
  parser.add_argument("--no-export", action="store_true")
  cli.add_cache_flag(parser)
  cli.add_thread_flags(parser)
  cli.add_verbose_flag(parser)
  return parser.parse_args(argv)


def main(argv=None) -> int:
  logging.basicConfig(level=logging.WARNING, format="%(message)s")
  logging.getLogger("remi_tf").setLevel(logging.INFO)
  args = parse_args(argv)
  try:
    return train(args)
  except (*INPUT_ERRORS, layout.ModelFolderError) as error:
    print(f"error: {error}", file=sys.stderr)
    return 2


def train(args: argparse.Namespace) -> int:
  """Resolves the configuration, trains, evaluates, exports, prints (or,
  on a parameter-server worker or ps task, serves)."""
  task = distribute.read_task(args.strategy, args.ps_shards)
  if task.strategy == "multi-worker" and not args.output:
    # Each worker would pick its own default folder (named by the time).
    raise distribute.ClusterError(
        "--strategy multi-worker needs --output: every worker must write "
        "to and resume from the same run folder")
  if task.serves:
    distribute.serve(task)
    return 0
  threads.configure(args.inter_op_threads, args.intra_op_threads)
  run_config = runs.resolve_config(**cli.run_settings(args))
  run_dir = args.output or runs.default_run_dir(run_config)
  export_dir = None if args.no_export else (
      args.export_dir or os.path.join("saved_models", run_config.dataset))
  if runs.is_complete(run_config, run_dir, export_dir):
    print(f"run folder {run_dir} is complete, nothing to do (for a new run "
          "of this configuration: --output NEW_FOLDER)")
    return 0
  print(f"run folder: {run_dir}", flush=True)
  metrics = runs.train_run(run_config, run_dir, export_dir, args.cache_dir,
                           task)
  if not task.is_chief:
    print(f"{task.task_type} {task.index}: training done (the chief writes "
          "the run)")
    return 0
  print(json.dumps({key: metrics[key] for key in
                    ("dataset", "valid", "test", "steps", "train_seconds",
                     "samples_per_second")}, indent=2))
  if export_dir is not None:
    print(cli.how_to_serve(export_dir))
  return 0


if __name__ == "__main__":
  sys.exit(main())
