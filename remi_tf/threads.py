"""TensorFlow's CPU thread pools for training: one thread per core in all.

By default TensorFlow runs up to C ops at once (inter-op threads) and splits
each op over C threads (intra-op), C the number of cores, so a training
step's concurrent ops and their shards contend for the same cores. REMI's
step has about two independent chains of ops at any time (the tower and
the negative sampler, Adam's updates of different variables), so
`training_threads` gives it two inter-op threads, each running its ops with
C / 2 threads: every core busy, none shared. On the project's 2-core
machine (inter 2, intra 1) a Gowalla-shaped REMI step took 16.6 instead of
19.2 ms (docs/RESULTS.md, "Training speed").

The pools are created when TensorFlow first runs an op, so the threads must
be set before that: the training pipelines call `configure` first thing.
"""

import logging
import os
from typing import Callable, Optional, Tuple

import tensorflow as tf

logger = logging.getLogger(__name__)


def training_threads(cpu_count: int) -> Tuple[int, int]:
  """(inter-op, intra-op) threads for training on `cpu_count` cores: two
  concurrent ops (one on a single core), together on at most all cores."""
  inter_op = min(2, max(cpu_count, 1))
  return inter_op, max(1, cpu_count // inter_op)


def configure(inter_op: Optional[int] = None,
              intra_op: Optional[int] = None) -> Tuple[int, int]:
  """Sets TensorFlow's thread pools for a training process.

  Args:
    inter_op: ops run at once; None: `training_threads`'s; 0: TensorFlow's
      default (the core count).
    intra_op: threads per op; None and 0 likewise.

  Returns:
    (inter_op, intra_op) as TensorFlow now has them (0: its default).
    If TensorFlow has already run an op, its pools are fixed: the values
    are left as they are (a warning says so when they were asked for).
  """
  cores = (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
           else os.cpu_count() or 1)
  policy = training_threads(cores)
  wanted = (policy[0] if inter_op is None else inter_op,
            policy[1] if intra_op is None else intra_op)
  try:
    tf.config.threading.set_inter_op_parallelism_threads(wanted[0])
    tf.config.threading.set_intra_op_parallelism_threads(wanted[1])
  except RuntimeError:
    (logger.info if inter_op is None and intra_op is None else
     logger.warning)("TensorFlow is already running: its thread pools stay "
                     "as they are")
  threads = (tf.config.threading.get_inter_op_parallelism_threads(),
             tf.config.threading.get_intra_op_parallelism_threads())
  logger.info("TensorFlow threads: %s inter-op, %s intra-op (%d cores)",
              *[count or "default" for count in threads], cores)
  return threads


def in_halves(function: Callable[[tf.Tensor], tf.Tensor],
              rows: tf.Tensor) -> tf.Tensor:
  """`function(rows)` on the first and on the second half of the rows,
  concatenated.

  The halves are independent ops, which TensorFlow runs at once on its two
  inter-op threads, so work that is one long op (evaluation's scoring of a
  batch against the catalog) uses two cores even with one thread per op
  (`training_threads` on 2 cores).

  Args:
    function: maps r rows [r, ...] to r rows [r, ...], each output row from
      the same input row.
    rows: float [R, ...].

  Returns:
    `function(rows)`, computed in two halves.
  """
  half = tf.shape(rows)[0] // 2
  return tf.concat([function(rows[:half]), function(rows[half:])], axis=0)
