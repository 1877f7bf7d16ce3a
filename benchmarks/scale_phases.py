"""One phase of `benchmarks/scale.py` on a prepared (cached) dataset, run in
its own process so that its time and peak resident memory are its own.

  python benchmarks/scale_phases.py train --work DIR --dataset taobao \
      --raw-file UserBehavior.csv --cache-dir CACHE --steps 1000
  python benchmarks/scale_phases.py validate --work DIR --cache-dir CACHE
  python benchmarks/scale_phases.py export --work DIR --cache-dir CACHE

train     the run's model as `remi_tf.training.build_model` builds it, fed
          by `remi_tf.data.inputs.training_dataset`: a warm-up `fit`
          (tracing), then a timed `fit` of --steps; samples/s of the timed
          one. Writes DIR/config.json and the weights.
validate  one exact validation pass (`remi_tf.evaluation.evaluate`) over
          all validation users of the dataset (--users N: the first N). Memory: the resident set
          before the pass (dataset and model loaded, tower traced) and the
          peak during the pass (Linux's high-water mark, reset just before
          it through /proc/self/clear_refs), hence what the pass itself
          costs beyond the model.
export    `remi_tf.export.export_model` into DIR/export: the user tower
          SavedModels and the ScaNN index, built, tuned and its recall@50
          measured against exact search on test users' interests.

Each prints one JSON line on stdout: the phase's figures, "seconds" and
"peak_rss_mb".
"""

import argparse
import json
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from remi_tf import cli  # noqa: E402  pylint: disable=wrong-import-position
cli.configure_logging()  # before TensorFlow loads
import numpy as np  # noqa: E402  pylint: disable=wrong-import-position
import tensorflow as tf  # noqa: E402  pylint: disable=wrong-import-position

from remi_tf import evaluation, export, runs, training  # noqa: E402  pylint: disable=wrong-import-position
from remi_tf.data import load_dataset  # noqa: E402  pylint: disable=wrong-import-position
from remi_tf.data.inputs import evaluation_examples, training_dataset  # noqa: E402  pylint: disable=wrong-import-position
from remi_tf.optimizers import CatchUpCallback  # noqa: E402  pylint: disable=wrong-import-position

EXPORT = "export"


def _reset_peak_rss() -> None:
  """Resets VmHWM to the current resident set (Linux >= 4.0)."""
  with open("/proc/self/clear_refs", "w", encoding="ascii") as clear_refs:
    clear_refs.write("5")


def _load(args):
  """(run config, dataset, model) of the work folder, the model with the
  weights the train phase wrote (`training.best_model`, as a run's)."""
  with open(os.path.join(args.work, training.CONFIG_FILE),
            encoding="utf-8") as stored:
    run_config = runs.RunConfig.from_json(json.load(stored))
  dataset = load_dataset(run_config.dataset, run_config.raw_file,
                         run_config.threshold, cache_dir=args.cache_dir)
  model = training.best_model(dataset, run_config.model, run_config.train,
                              args.work)
  return run_config, dataset, model


def train(args) -> dict:
  """The train phase: a warm-up fit, then --steps timed; saves the weights."""
  run_config = runs.resolve_config(args.dataset, args.raw_file,
                                   max_steps=args.steps, eval_every=args.steps)
  dataset = load_dataset(run_config.dataset, run_config.raw_file,
                         run_config.threshold, cache_dir=args.cache_dir)
  os.makedirs(args.work, exist_ok=True)
  training.write_json(os.path.join(args.work, training.CONFIG_FILE),
                      run_config.to_json())
  tf.keras.utils.set_random_seed(run_config.train.seed)
  model = training.build_model(dataset, run_config.model,
                               run_config.train.learning_rate,
                               run_config.train.seed,
                               run_config.train.optimizer)
  stream = training_dataset(dataset.train, run_config.model.seq_len,
                            run_config.train.batch_size,
                            run_config.train.seed)
  start = time.perf_counter()
  model.fit(stream, steps_per_epoch=args.warmup_steps, epochs=1, verbose=0,
            callbacks=[CatchUpCallback()])
  warmup_seconds = time.perf_counter() - start
  start = time.perf_counter()
  model.fit(stream, steps_per_epoch=args.steps, epochs=1, verbose=0,
            callbacks=[CatchUpCallback()])
  seconds = time.perf_counter() - start
  model.save_weights(os.path.join(args.work, training.BEST_WEIGHTS))
  return {"embedding_rows": dataset.num_items + 1,
          "seq_len": run_config.model.seq_len,
          "batch_size": run_config.train.batch_size,
          "warmup_steps": args.warmup_steps,
          "warmup_seconds": warmup_seconds, "steps": args.steps,
          "train_seconds": seconds,
          "samples_per_second":
              args.steps * run_config.train.batch_size / seconds}


def validate(args) -> dict:
  """The validate phase: one exact pass and what it costs beyond the model."""
  run_config, dataset, model = _load(args)
  model.tower(tf.zeros([1, run_config.model.seq_len], tf.int32))
  before_mb = cli.memory_mb("VmRSS")
  _reset_peak_rss()
  start = time.perf_counter()
  examples = evaluation_examples(dataset.valid,
                                 run_config.model.seq_len).first(args.users)
  metrics = evaluation.evaluate(model.tower, examples)
  seconds = time.perf_counter() - start
  pass_peak_mb = cli.memory_mb()
  return {"users": len(examples.histories),
          "targets": int(len(examples.target_items)),
          "longest_target_list": int(np.diff(examples.target_offsets)
                                     .max(initial=0)),
          "items": dataset.num_items, "metrics": metrics,
          "validation_seconds": seconds,
          "users_per_second": len(examples.histories) / seconds,
          "rss_before_mb": before_mb, "pass_peak_rss_mb": pass_peak_mb,
          "pass_memory_mb": pass_peak_mb - before_mb}


def export_phase(args) -> dict:
  """The export phase: SavedModels and the tuned ScaNN index."""
  run_config, dataset, model = _load(args)
  start = time.perf_counter()
  metadata = export.export_model(model.tower, dataset, run_config, {},
                                 os.path.join(args.work, EXPORT))
  return {"export_seconds": time.perf_counter() - start,
          "export_dir": os.path.join(args.work, EXPORT),
          "version": metadata["version"], "items": metadata["num_items"],
          "index": metadata["index"]}


PHASES = {"train": train, "validate": validate, "export": export_phase}


def parse_args(argv=None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(
      description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  parser.add_argument("phase", choices=sorted(PHASES))
  parser.add_argument("--work", required=True,
                      help="folder of the run's config, weights and export")
  parser.add_argument("--cache-dir", required=True)
  parser.add_argument("--dataset", help="train: the dataset")
  parser.add_argument("--raw-file", help="train: its raw file")
  parser.add_argument("--steps", type=int, default=1000,
                      help="train: timed steps")
  parser.add_argument("--users", type=int,
                      help="validate: only the first N validation users "
                      "(default all)")
  parser.add_argument("--warmup-steps", type=int, default=50,
                      help="train: untimed steps first")
  args = parser.parse_args(argv)
  if args.phase == "train" and not args.dataset:
    parser.error("train needs --dataset")
  return args


def main(argv=None) -> int:
  args = parse_args(argv)
  start = time.perf_counter()
  figures = PHASES[args.phase](args)
  print(json.dumps({"phase": args.phase, **figures,
                    "seconds": time.perf_counter() - start,
                    "peak_rss_mb": cli.memory_mb()}))
  return 0


if __name__ == "__main__":
  sys.exit(main())
