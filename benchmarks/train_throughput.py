"""Training-step throughput (samples/s) at the paper's Gowalla shapes, for
plain sampled softmax and for REMI, measured in the same process; against
another git revision with --compare-ref; with a per-part profile of the
step (--profile) and its roofline (--roofline).

What runs: the training model as `remi_tf.training.build_model` builds it
(`build_user_tower` + `make_sampler` + `RetrievalModel`, compiled with
`remi_tf.optimizers.LazyAdam`), fed by the package's own training input
pipeline (`remi_tf.data.inputs.training_dataset`) over 10,000 synthetic
users of uniform random items, each with seq_len to seq_len + 19 of them.
As in training, each example's target is drawn at a position 4..length-1
and its history is the up to seq_len items before it, so histories vary in
length: at seq_len 40 about 20% are full and the others end in padding
(15 positions on average). Two variants:

  plain  beta 0, rr_lambda 0        (ComiRec-SA's sampled softmax)
  remi   beta --beta, rr_lambda --rr-lambda   (IHN + routing regularization)

For each: one `fit` of --warmup-steps (tracing, allocation), then a timed
`fit(steps_per_epoch=--steps, epochs=1, verbose=0)`. With --repeats R the
timed fits alternate plain/remi R times (every other round remi first) and
the median rate is reported. Plain's model is built (and warmed up) first,
REMI's with --remi-first.

REMI's overhead over plain, `overhead_percent`, is REMI's mean step time
over all rounds against plain's, - 1 (in %): what a long training run
pays. Each round's pair, plain / remi - 1, is in
`overhead_percent_by_round`, with its median and quartiles
(`overhead_percent_pairs_median`, `_quartiles`). The machine's state
drifts by up to 10% from one round to the next here, so a few percent
needs many rounds: with 20 at --steps 300 on this 2-core machine the
pairs' quartiles are 6-18 points apart, and three such runs of the same
code gave 3.4-5.8% for MIND and 2.1-9.8% at Books shapes. Within one
process, the model built second ran about 2 points slower in probes of
either order, so the overhead is best measured with --processes P: the
rounds run in P fresh processes of this tree (--repeats each), every other
one building REMI's model first, and all their rounds are pooled into the
figures above; `processes` lists each process's own overhead.

--step-pairs P: after the fits, REMI's overhead per step from P pairs of
calls, each 20 steps of the model's train_step in one tf.function (no
Keras fit), the two variants alternating call by call, every other pair
REMI first: `step_overhead_percent`, REMI's total time over plain's - 1,
with the pairs' quartiles. Alternating every 0.1-0.2 s rather than every
fit leaves the machine's drift little room inside a pair; Keras fit's
per-step dispatch, the same for both, is left out. With --step-pairs the
<= 3% target applies to this figure (with --processes, pooled over the
processes).

--items is the number of embedding rows: the default 174606 is Gowalla's
174,605 items plus the padding row (num_items = items - 1). Several sizes,
e.g. `--items 174606 367983 1708531` (Gowalla, Amazon Books, Taobao), are
measured in one process, every (size, variant) once per repeat in turn;
`remi_rate_ratio_by_items` is REMI's rate at each size over its rate at
the first, and `smallest_rate_ratio` must be >= 0.85 (the row-sparse
optimizer touches only the batch's rows, so the table's size should not
matter).

Uniform ids touch more distinct embedding rows per batch than real,
popularity-skewed data, so the sparse (lazy) optimizer update here is, if
anything, pessimistic.

--compare-ref REF: this tree against git revision REF (e.g. f6ecd87), in
one run. REF is checked out with `git worktree add --detach` into a
temporary folder (removed at the end, also on failure). Each round runs
REF's benchmarks/train_throughput.py and this tree's, each in a fresh
process of this Python with its tree as working directory and --repeats 1,
with the same measurement flags (shapes, model, sampler, optimizer,
learning rate, beta, rr_lambda, steps, warm-up, seed; those REF's --help
does not name are dropped and listed in `dropped_flags`); --repeats R
rounds, every other one in reverse order. Reported per variant: both
trees' samples/s of every round, their medians and new / ref; the headline
`ratio_remi_new_over_ref` must be >= 1.8 (issue 13's target against
f6ecd87 at the default shapes). With --profile, this tree's process of the
last round also profiles; with --roofline, the roofline is computed here
after the rounds, from this tree's median REMI rate.

--profile: milliseconds per step of each part of the REMI model's step at
the given shapes, each part alone in a tf.function, taken from the model
`build_model` built (model.tower, model.sampler, model.task,
model.optimizer) and timed after the timed fits: median of
--profile-calls calls after a few untimed ones. Parts: `input` (the next
batch of the training stream), `tower_forward`, `tower_forward_backward`
(gradients of sum(interests) + sum(routing)), `sampler`,
`logits_loss_forward` and `logits_loss_forward_backward` (model.task, the
TFRS Retrieval task with SampledSoftmaxIHN, on the arguments
compute_loss gives it for one batch; gradients with respect to its
embedding arguments), `optimizer_apply` (model.optimizer.apply_gradients
of one step's gradients: LazyAdam's row-sparse update of the item table
and Adam on the dense weights), `train_step` (model.train_step on the
stream, 10 steps per tf.function call, without Keras `fit`) and `fit`
(per step, from the timed fit). `fit_overhead_ms` is fit - train_step;
`unattributed_ms` is train_step minus input, tower forward+backward,
sampler, logits+loss forward+backward and optimizer (the candidates'
lookups, hard readout, routing regularizer and diagnostics, and what
running the parts together saves or costs); `tf_function_call_ms` is the
cost of calling an empty tf.function, included once in every part.

--roofline (off by default; a few seconds; ComiRec-SA, ComiRec-DR, MIND,
Re4, UMI and PIMIRec): FLOPs and bytes moved per sample from the shapes
(`step_cost`), the machine's float32 matmul FLOP/s (TensorFlow, the
step's largest matmul shape, all cores) and memory bandwidth (numpy copy
and triad over 64 MB arrays, one thread per core), both the best of
several runs; the best possible samples/s is min(FLOP/s / FLOPs per
sample, bandwidth / bytes per sample), and `achieved_fraction` is REMI's
measured samples/s over it.

Targets (2 cores): >= 6,000 samples/s (aim 10,000) for REMI; REMI's
overhead over plain <= 3% (issue 13).

  python benchmarks/train_throughput.py                      # full size
  python benchmarks/train_throughput.py --items 5000 --steps 30 --warmup-steps 5
  python benchmarks/train_throughput.py --optimizer adam     # dense Adam
  python benchmarks/train_throughput.py --items 174606 367983 1708531 --repeats 3
  python benchmarks/train_throughput.py --compare-ref f6ecd87 --repeats 2
  python benchmarks/train_throughput.py --profile --roofline
  python benchmarks/train_throughput.py --model mind --repeats 2 \
      --steps 300 --step-pairs 60 --processes 6

Prints progress on stderr and one JSON line on stdout.
"""

import argparse
import concurrent.futures
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import types

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common  # noqa: E402  (repo root on sys.path; imports remi_tf first)

TARGETS = {"samples_per_second_remi": (">=", 6000.0),
           "overhead_percent": ("<=", 3.0)}
# With several --items: REMI's rate at each size over its rate at the first.
SCALING_TARGET = (">=", 0.85)
# With --compare-ref: issue 13's target against f6ecd87.
COMPARE_TARGET = (">=", 1.8)
AIM_SAMPLES_PER_SECOND = 10_000.0

SCRIPT = os.path.join("benchmarks", "train_throughput.py")
NEW, REF = "new", "ref"
VARIANTS = ("plain", "remi")
# What sets the measurement, passed to both trees by --compare-ref.
MEASUREMENT_FLAGS = ("items", "seq_len", "batch_size", "negatives",
                     "embedding_dim", "interests", "model", "sampler",
                     "optimizer", "learning_rate", "beta", "rr_lambda",
                     "warmup_steps", "steps", "seed")
PROFILE_STEPS_PER_CALL = 10
# Steps per tf.function call of --step-pairs.
STEP_PAIR_STEPS = 20
# The contexts each PIMIRec item attends to in a graph round (previous
# item, itself, next item, centre, own input: pimirec._neighbourhood).
STAR_CONTEXTS = 5
FLOAT_BYTES, COUNTER_BYTES = 4, 8
PROBE_ARRAY_BYTES = 64 * 2**20
PROBE_RUNS = 5


def parse_args(argv=None):
  from remi_tf import config  # pylint: disable=g-import-not-at-top
  parser = argparse.ArgumentParser(
      description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  parser.add_argument("--items", type=int, nargs="+", default=[174606],
                      help="embedding rows incl. padding (num_items + 1); "
                      "several sizes\nare measured alternating, the first "
                      "the reference of the others")
  parser.add_argument("--seq-len", type=int, default=40)
  parser.add_argument("--batch-size", type=int, default=128)
  parser.add_argument("--negatives", type=int, default=1280)
  parser.add_argument("--embedding-dim", type=int, default=64)
  parser.add_argument("--interests", type=int, default=4)
  parser.add_argument("--model", default="comirec-sa",
                      choices=[m for m in config.MODELS if m != "pop"])
  parser.add_argument("--sampler", default="uniform",
                      choices=config.SAMPLERS)
  parser.add_argument("--optimizer", default="lazy-adam",
                      choices=config.OPTIMIZERS,
                      help="remi_tf.optimizers.LazyAdam (as training) or "
                      "dense tf.keras.optimizers.Adam")
  parser.add_argument("--learning-rate", type=float, default=1e-3)
  parser.add_argument("--beta", type=float, default=1.0,
                      help="IHN beta of the remi variant (Gowalla: 1)")
  parser.add_argument("--rr-lambda", type=float, default=100.0,
                      help="RR weight of the remi variant")
  parser.add_argument("--warmup-steps", type=int, default=50)
  parser.add_argument("--steps", type=int, default=500)
  parser.add_argument("--repeats", type=int, default=1,
                      help="timed fits per variant, alternating; median\n"
                      "(with --compare-ref: rounds of both trees)")
  parser.add_argument("--seed", type=int, default=2023)
  parser.add_argument("--step-pairs", type=int, default=0,
                      help="after the fits, this many alternated pairs of "
                      f"{STEP_PAIR_STEPS}-step\ncalls of each model's "
                      "train_step: REMI's overhead per step")
  parser.add_argument("--processes", type=int, default=1,
                      help="run the --repeats rounds in this many fresh "
                      "processes each,\nevery other one building REMI's "
                      "model first; rates pooled")
  parser.add_argument("--remi-first", action="store_true",
                      help="build and warm up REMI's model before plain's")
  parser.add_argument("--compare-ref", metavar="REF",
                      help="also run the benchmark of git revision REF "
                      "(e.g. f6ecd87),\nalternating with this tree's")
  parser.add_argument("--profile", action="store_true",
                      help="time each part of REMI's training step")
  parser.add_argument("--profile-calls", type=int, default=50,
                      help="timed calls per part of --profile (median)")
  parser.add_argument("--roofline", action="store_true",
                      help="FLOPs and bytes per sample, the machine's "
                      "matmul FLOP/s and\nbandwidth, the best possible "
                      "samples/s and the achieved fraction")
  args = parser.parse_args(argv)
  if min(args.items) < 2:
    parser.error("--items must be >= 2 (padding + one item)")
  _common.require_positive(
      parser, args, ("seq_len", "batch_size", "negatives", "steps", "repeats",
                     "profile_calls", "processes"))
  if args.step_pairs < 0 or args.step_pairs == 1:
    parser.error("--step-pairs must be 0 or >= 2")
  if args.processes > 1 and (args.compare_ref is not None or args.profile
                             or len(args.items) > 1):
    parser.error("--processes measures one --items size, without "
                 "--compare-ref or --profile")
  if args.roofline and args.model not in ENCODER_COSTS:
    parser.error(f"--roofline models {', '.join(ENCODER_COSTS)}, not "
                 f"{args.model}")
  args.ref_commit = None
  if args.compare_ref is not None:
    if len(args.items) > 1:
      parser.error("--compare-ref measures one --items size")
    try:
      args.ref_commit = _common.git("rev-parse", "--verify",
                                    f"{args.compare_ref}^{{commit}}")
      _common.git("cat-file", "-e", f"{args.ref_commit}:{SCRIPT}")
    except subprocess.CalledProcessError:
      parser.error(f"--compare-ref {args.compare_ref} is not a revision of "
                   f"this repository with {SCRIPT}")
  return args


def synthetic_stream(num_items: int, seq_len: int, batch_size: int,
                     seed: int):
  """The package's own training stream (remi_tf.data.inputs) over 10,000
  synthetic users of uniform random items, each with seq_len + U{0..19}
  items; histories are as long as their random target position allows
  (about 20% full at seq_len 40)."""
  from remi_tf.data import UserSequences  # pylint: disable=g-import-not-at-top
  from remi_tf.data.inputs import training_dataset  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(seed)
  lengths = rng.integers(seq_len, seq_len + 20, size=10_000)
  offsets = np.concatenate([[0], np.cumsum(lengths)])
  users = UserSequences(
      offsets=offsets,
      items=rng.integers(1, num_items + 1, size=offsets[-1]).astype(np.int32),
      users=np.arange(len(lengths)).astype(str))
  return training_dataset(users, seq_len, batch_size, seed)


def build(args, num_items: int, beta: float, rr_lambda: float):
  """The compiled training model, through remi_tf.training.build_model."""
  from remi_tf import config, training  # pylint: disable=g-import-not-at-top
  model_config = config.ModelConfig(
      model=args.model, interests=args.interests,
      embedding_dim=args.embedding_dim, seq_len=args.seq_len, beta=beta,
      rr_lambda=rr_lambda, negatives=args.negatives, sampler=args.sampler)
  # build_model reads only num_items and item_counts of the dataset.
  dataset = types.SimpleNamespace(num_items=num_items, item_counts=None)
  return training.build_model(dataset, model_config, args.learning_rate,
                              args.seed, args.optimizer)


def summarize(items, rates, losses, warmup_seconds, models, variants, args):
  """Per variant at table size `items`: the median rate and its details
  (the other arguments are keyed by (items, variant))."""
  results = {}
  for name in variants:
    key = items, name
    rate = statistics.median(rates[key])
    results[name] = {
        "samples_per_second": rate,
        "steps_per_second": rate / args.batch_size,
        "ms_per_step": 1e3 * args.batch_size / rate,
        "all_samples_per_second": rates[key],
        "warmup_seconds": warmup_seconds.get(key),
        "final_loss": losses[key],
        "optimizer_class": type(models[key].optimizer).__name__,
        "beta": variants[name][0], "rr_lambda": variants[name][1],
    }
  return results


def step_pair_seconds(args, models, stream) -> dict:
  """{variant: seconds of each of its args.step_pairs calls}: every call
  runs STEP_PAIR_STEPS steps of the model's train_step in one tf.function
  (no Keras fit); both read one iterator of `stream`; `alternate` times
  them."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  iterator = iter(stream)
  calls = {}
  for name, model in models.items():
    def steps(iterator, model=model):
      for _ in tf.range(STEP_PAIR_STEPS):
        model.train_step(next(iterator))
    traced = tf.function(steps)
    traced(iterator)  # traced and warmed up
    calls[name] = lambda traced=traced: traced(iterator)
  return alternate(calls, args.step_pairs)


def alternate(calls: dict, pairs: int) -> dict:
  """{variant: seconds of each of its `pairs` calls}, the variants of
  `calls` ({name: no-argument callable}) alternating call by call, every
  other pair in reverse order. Alternating every 0.1-0.2 s, not every fit,
  leaves the machine's drift little room between the two of a pair."""
  names = list(calls)
  seconds = {name: [] for name in names}
  for pair in range(pairs):
    for name in (names if pair % 2 == 0 else names[::-1]):
      elapsed, _ = _common.timed(calls[name])
      seconds[name].append(elapsed)
  return seconds


def add_step_overhead(figures: dict, targets: dict, seconds: dict) -> dict:
  """Adds REMI's overhead per step to `figures` from `step_pair_seconds`'s
  {variant: seconds}: `headline`'s formula on the calls' rates (the same
  steps each), i.e. REMI's total time over plain's - 1, in %, with the
  pairs' quartiles. Logs it; returns `targets` with the overhead's target
  moved to it."""
  per_call = headline(*([1.0 / elapsed for elapsed in seconds[variant]]
                        for variant in VARIANTS))
  figures.update({
      "step_overhead_percent": per_call["overhead_percent"],
      "step_overhead_percent_pairs_quartiles":
          per_call["overhead_percent_pairs_quartiles"],
      "step_pairs": len(seconds["plain"]), "step_pair_seconds": seconds})
  low, _, high = figures["step_overhead_percent_pairs_quartiles"]
  _common.log(f"per step, {figures['step_pairs']} pairs of "
              f"{STEP_PAIR_STEPS} steps: overhead "
              f"{figures['step_overhead_percent']:.1f}%; pairs' quartiles "
              f"{low:.1f}, {high:.1f}")
  targets = dict(targets)
  targets["step_overhead_percent"] = targets.pop("overhead_percent")
  return targets


def headline(plain_rates, remi_rates) -> dict:
  """The figures of plain's and REMI's samples/s, one of each per round
  (the same steps each): the median rates, and REMI's overhead in %: over
  all rounds, its mean step time over plain's - 1, and each round's pair,
  plain / remi - 1, with their median and quartiles."""
  plain, remi = statistics.median(plain_rates), statistics.median(remi_rates)
  overheads = [(p / r - 1.0) * 100.0 for p, r in zip(plain_rates, remi_rates)]
  step_time_ratio = (sum(1.0 / r for r in remi_rates) /
                     sum(1.0 / p for p in plain_rates))
  return {"samples_per_second_remi": remi,
          "samples_per_second_plain": plain,
          "ratio_remi_over_plain": remi / plain,
          "overhead_percent": (step_time_ratio - 1.0) * 100.0,
          "overhead_percent_pairs_median": statistics.median(overheads),
          "overhead_percent_pairs_quartiles": (
              statistics.quantiles(overheads, n=4, method="inclusive")
              if len(overheads) > 1 else None),
          "overhead_percent_by_round": overheads}


def log_overhead(figures: dict) -> None:
  quartiles = figures["overhead_percent_pairs_quartiles"]
  pairs = (f"; pairs: median {figures['overhead_percent_pairs_median']:.1f}%"
           f", quartiles {quartiles[0]:.1f}, {quartiles[2]:.1f}"
           if quartiles else "")
  _common.log(f"remi/plain = {figures['ratio_remi_over_plain']:.3f}, "
              f"overhead {figures['overhead_percent']:.1f}%{pairs}")


# --- one tree ---------------------------------------------------------------


def measure(args) -> dict:
  """The benchmark in this process: every (size, variant) fitted, then
  the profile and roofline if asked. Returns the JSON line's figures."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from remi_tf import threads  # pylint: disable=g-import-not-at-top
  # The thread pools the training pipelines set (train.py, reproduce.py).
  inter_op, intra_op = threads.configure()
  tf.keras.utils.set_random_seed(args.seed)
  variants = {"plain": (0.0, 0.0), "remi": (args.beta, args.rr_lambda)}
  if args.remi_first:
    variants = dict(reversed(variants.items()))
  models, streams, warmup_seconds = {}, {}, {}
  for items in args.items:
    num_items = items - 1
    streams[items] = synthetic_stream(num_items, args.seq_len,
                                      args.batch_size, args.seed)
    for name, (beta, rr_lambda) in variants.items():
      _common.log(f"{name}: building {args.model} (N={num_items}, "
                  f"d={args.embedding_dim}, K={args.interests}, "
                  f"beta={beta}, rr_lambda={rr_lambda}, {args.optimizer})")
      models[items, name] = build(args, num_items, beta, rr_lambda)
      if args.warmup_steps > 0:
        warmup_seconds[items, name], _ = _common.timed(
            lambda m=models[items, name], s=streams[items]: m.fit(
                s, steps_per_epoch=args.warmup_steps, epochs=1, verbose=0))
        _common.log(f"{name}: warm-up {args.warmup_steps} steps in "
                    f"{warmup_seconds[items, name]:.1f}s")

  # Every (size, variant) once per repeat, alternating, so that drifts of a
  # shared machine spread over all of them.
  rates = {key: [] for key in models}
  losses = {}
  for repeat in range(args.repeats):
    # Every other round remi first, so that neither variant always runs
    # on the machine as the other left it.
    names = list(variants)[::-1 if repeat % 2 else 1]
    for items in args.items:
      for name in names:
        seconds, history = _common.timed(
            lambda m=models[items, name], s=streams[items]: m.fit(
                s, steps_per_epoch=args.steps, epochs=1, verbose=0))
        rate = args.steps * args.batch_size / seconds
        rates[items, name].append(rate)
        losses[items, name] = float(history.history["loss"][-1])
        _common.log(f"{name} N={items - 1} [{repeat + 1}/{args.repeats}]: "
                    f"{args.steps} steps in {seconds:.2f}s = {rate:,.0f} "
                    f"samples/s (loss {losses[items, name]:.3f})")

  by_items = {items: summarize(items, rates, losses, warmup_seconds, models,
                               variants, args)
              for items in args.items}
  first = args.items[0]
  figures = headline(rates[first, "plain"], rates[first, "remi"])
  targets = dict(TARGETS)
  several = len(args.items) > 1
  ratios = {items: by_items[items]["remi"]["samples_per_second"]
            / figures["samples_per_second_remi"] for items in args.items}
  if several:
    figures["smallest_rate_ratio"] = min(ratios.values())
    targets["smallest_rate_ratio"] = SCALING_TARGET
  log_overhead(figures)
  if args.step_pairs:
    targets = add_step_overhead(figures, targets, step_pair_seconds(
        args, {name: models[first, name] for name in VARIANTS},
        streams[first]))
  profile = (profile_step(args, models[first, "remi"], streams[first],
                          by_items[first]["remi"]["ms_per_step"])
             if args.profile else None)
  return {
      **figures, "variants": by_items[first], "num_items": first - 1,
      "by_items": by_items if several else None,
      "remi_rate_ratio_by_items": ratios if several else None,
      "profile": profile,
      "tensorflow_threads": {"inter_op": inter_op, "intra_op": intra_op},
      "roofline": (roofline(args, figures["samples_per_second_remi"])
                   if args.roofline else None),
      "targets": {**_common.describe_targets(targets),
                  "aim_samples_per_second": AIM_SAMPLES_PER_SECOND},
      "meets_targets": _common.check_targets(figures, targets),
  }


# --- profile ----------------------------------------------------------------


class _CallRecorder:
  """Stands in for a layer: calls it and records the arguments."""

  def __init__(self, layer):
    self.layer = layer
    self.calls = []

  def __call__(self, *args, **kwargs):
    self.calls.append((args, kwargs))
    return self.layer(*args, **kwargs)


def task_arguments(model, batch) -> tuple:
  """(args, kwargs) that `model.compute_loss(batch)` passes to `model.task`,
  from one eager call."""
  task = model.task
  recorder = _CallRecorder(task)
  # object.__setattr__: past Keras's attribute tracking, which would
  # register the stand-in as a layer of the model.
  object.__setattr__(model, "task", recorder)
  try:
    model.compute_loss(batch, training=True)
  finally:
    object.__setattr__(model, "task", task)
  if len(recorder.calls) != 1:
    raise RuntimeError(f"compute_loss called model.task "
                       f"{len(recorder.calls)} times, not once")
  return recorder.calls[0]


def _median_ms(function, calls: int, warmup: int,
               steps_per_call: int = 1) -> float:
  """Median milliseconds per step of `function()` over `calls` calls after
  `warmup` untimed ones."""
  seconds = _common.time_calls(lambda _: function(), [None] * calls,
                               warmup=warmup)
  return 1e3 * float(np.median(seconds)) / steps_per_call


def profile_step(args, model, stream, fit_ms_per_step: float) -> dict:
  """Milliseconds per step of each part of `model`'s training step.

  Each part runs alone in its own tf.function on one batch of `stream`
  (int32 history [B, n], target [B]), warmed up, then timed call by call
  (median of args.profile_calls). The parts are those of the model itself:
  model.tower, model.sampler, model.task (on the arguments compute_loss
  passes it), model.optimizer, model.train_step.

  Args:
    args: the benchmark's arguments (profile_calls).
    model: a compiled `RetrievalModel` that has been fitted (optimizer
      built).
    stream: its training stream.
    fit_ms_per_step: ms per step of the model's timed Keras fit.

  Returns:
    {"ms_per_step": {part: ms}, "fit_overhead_ms", "unattributed_ms",
    "tf_function_call_ms", "calls", "train_step_steps_per_call"}.
  """
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  iterator = iter(stream)
  batch = next(iterator)
  history, target = batch["history"], batch["target"]
  task_args, task_kwargs = task_arguments(model, batch)
  variables = model.trainable_variables
  with tf.GradientTape() as tape:
    loss = model.compute_loss(batch, training=True)
  gradients = tape.gradient(loss, variables)

  def tower_forward_backward(history):
    with tf.GradientTape() as tape:
      outputs = model.tower(history, training=True)
      total = (tf.reduce_sum(outputs["interests"])
               + tf.reduce_sum(outputs["routing"]))
    return tape.gradient(total, model.tower.trainable_variables)

  def loss_forward_backward(*task_args, **task_kwargs):
    embeddings = [value for value in task_args
                  if tf.is_tensor(value) and value.dtype.is_floating]
    with tf.GradientTape() as tape:
      tape.watch(embeddings)
      loss = model.task(*task_args, **task_kwargs)
    return tape.gradient(loss, embeddings)

  def train_steps(iterator):
    for _ in tf.range(PROFILE_STEPS_PER_CALL):
      model.train_step(next(iterator))

  take = tf.function(lambda iterator: next(iterator))
  tower = tf.function(lambda history: model.tower(history, training=True))
  tower_backward = tf.function(tower_forward_backward)
  sample = tf.function(lambda target: vars(model.sampler(target)))
  task = tf.function(lambda *task_args, **task_kwargs: model.task(
      *task_args, **task_kwargs))
  task_backward = tf.function(loss_forward_backward)
  apply = tf.function(lambda gradients: model.optimizer.apply_gradients(
      zip(gradients, variables)))
  parts = {
      "input": lambda: take(iterator),
      "tower_forward": lambda: tower(history),
      "tower_forward_backward": lambda: tower_backward(history),
      "sampler": lambda: sample(target),
      "logits_loss_forward": lambda: task(*task_args, **task_kwargs),
      "logits_loss_forward_backward": lambda: task_backward(*task_args,
                                                            **task_kwargs),
      "optimizer_apply": lambda: apply(gradients),
  }
  calls, warmup = args.profile_calls, max(2, args.profile_calls // 10)
  ms = {name: _median_ms(part, calls, warmup) for name, part in parts.items()}
  train = tf.function(train_steps)
  ms["train_step"] = _median_ms(
      lambda: train(iterator), max(2, calls // PROFILE_STEPS_PER_CALL), 1,
      PROFILE_STEPS_PER_CALL)
  ms["fit"] = fit_ms_per_step
  increment, zero = tf.function(lambda x: x + 1), tf.constant(0.0)
  call_ms = _median_ms(lambda: increment(zero), calls, warmup)
  unattributed = ms["train_step"] - sum(ms[name] for name in (
      "input", "tower_forward_backward", "sampler",
      "logits_loss_forward_backward", "optimizer_apply"))
  profile = {"ms_per_step": ms,
             "fit_overhead_ms": ms["fit"] - ms["train_step"],
             "unattributed_ms": unattributed,
             "tf_function_call_ms": call_ms, "calls": calls,
             "train_step_steps_per_call": PROFILE_STEPS_PER_CALL}
  _common.log(f"profile of remi's step (ms per step, median of {calls} "
              "calls):\n" + "\n".join(
                  f"  {name:<30} {value:8.3f}" for name, value in (
                      *ms.items(), ("fit overhead (fit - train_step)",
                                    profile["fit_overhead_ms"]),
                      ("unattributed", unattributed),
                      ("tf.function call", call_ms))))
  return profile


# --- roofline ---------------------------------------------------------------


def _self_attentive_cost(b, n, d, k):
  """ComiRec-SA: routing MLP d -> 4d (tanh) -> K over n positions, V = A H."""
  return {"flops": {"routing_w1": 2 * n * d * 4 * d,
                    "routing_w2": 2 * n * 4 * d * k,
                    "interests_av": 2 * k * n * d},
          "dense_parameters": 4 * d * d + 4 * d * k + n * d,
          "largest_activation": n * 4 * d,
          "largest_matmul": (b * n, d, 4 * d)}


def _routing_flops(n, d, k, iterations):
  """Capsule routing over u_hat [K, n, d]: per iteration the interests
  sum_n w u_hat and, but for the last, the logits u_hat . interest."""
  return (2 * iterations - 1) * 2 * k * n * d


def _capsule_cost(b, n, d, k, shared):
  """ComiRec-DR (a d x Kd map per position) or MIND (one d x d map shared,
  tiled over K): u_hat, then the routing."""
  from remi_tf.models import capsule  # pylint: disable=g-import-not-at-top
  out = d if shared else k * d
  return {"flops": {"u_hat": 2 * n * d * out,
                    "routing": _routing_flops(n, d, k,
                                              capsule.ROUTING_ITERATIONS)},
          "dense_parameters": d * d if shared else n * d * k * d,
          "largest_activation": k * n * d,
          "largest_matmul": (b * n, d, out)}


def _mlp_flops(rows, widths):
  """Dense layers widths[0] -> widths[1] -> ... applied to `rows` rows."""
  return sum(2 * rows * fan_in * fan_out
             for fan_in, fan_out in zip(widths, widths[1:]))


def _mlp_parameters(widths):
  """Kernels and biases of dense layers widths[0] -> widths[1] -> ..."""
  return sum(fan_in * fan_out + fan_out
             for fan_in, fan_out in zip(widths, widths[1:]))


def _re4_cost(b, n, d, k):
  """Re4: ComiRec-SA's forward, plus (training only) its backward flows:
  re-contrast's cosines of the interests with the user's items, the
  previous user's items and each other; re-attend's scores z_k . x_i;
  re-construct's decoder, per interest: upsample d -> n d, attention MLP
  d -> d -> n over the n slots and its weighted sum of the values S W5."""
  forward = _self_attentive_cost(b, n, d, k)
  flops = {**forward["flops"],
           "re_contrast": 2 * 2 * k * n * d + 2 * k * k * d,
           "re_attend": 2 * k * n * d,
           "decoder_upsample": 2 * k * d * n * d,
           "decoder_attention": 2 * k * n * d * d + 2 * k * n * d * n,
           "decoder_values": 2 * k * n * d * d + 2 * k * n * n * d}
  decoder_parameters = (_mlp_parameters([d, n * d]) + d * d + d * n
                        + d * d)
  return {"flops": flops,
          "dense_parameters": forward["dense_parameters"] + decoder_parameters,
          "largest_activation": max(forward["largest_activation"],
                                    k * n * d, k * n * n),
          "largest_matmul": max(forward["largest_matmul"],
                                (b * k, d, n * d), key=math.prod)}


def _umi_cost(b, n, d, k):
  """UMI: the profile p (F fields: the history's mean and last item), the
  user-guided attention MLP [e_i; p] -> h -> 1 per position, per-interest
  d x d maps u_ik = W_k e_i and their capsule routing, then per interest
  the refinement's gate [p; v_k] -> h -> F and mixer [gated p; v_k] ->
  d / 2 -> d (MLPs with biases)."""
  from remi_tf.models import umi  # pylint: disable=g-import-not-at-top
  h, fields = umi.HIDDEN_UNITS, umi.HistoryProfile.num_fields
  with_profile = (fields + 1) * d
  attention = [with_profile, h, 1]
  gate = [with_profile, h, fields]
  mix = [with_profile, max(d // 2, 1), d]
  return {"flops": {"profile_mean": 2 * n * d,
                    "user_guided_attention": _mlp_flops(n, attention),
                    "u_hat": 2 * n * d * k * d,
                    "routing": _routing_flops(n, d, k,
                                              umi.ROUTING_ITERATIONS),
                    "refinement_gate": _mlp_flops(k, gate),
                    "refinement_mix": _mlp_flops(k, mix)},
          "dense_parameters": (_mlp_parameters(attention) + d * k * d
                               + _mlp_parameters(gate)
                               + _mlp_parameters(mix)),
          "largest_activation": k * n * d,
          "largest_matmul": (b * n, d, k * d)}


def _pimirec_cost(b, n, d, k):
  """PIMIRec: periodicity (each position's interval weights, summed per
  interval [n, T + 1], times the interval table [T + 1, d]); R rounds of
  star-graph attention with h heads of width w = h floor(d / h) (per round
  the items' query, key and value projections, key and value of the
  centre and of the n inputs, dot products with and weighted sum of the C
  contexts, output w -> d; all rounds but the last the centre's: query,
  keys and values of n + 1 nodes, dot products and sum over them,
  output); then ComiRec-SA's extraction from the graph's outputs."""
  extraction = _self_attentive_cost(b, n, d, k)
  from remi_tf.models import pimirec  # pylint: disable=g-import-not-at-top
  span, rounds = pimirec.TIME_SPAN + 1, pimirec.NUM_BLOCKS
  width = pimirec.NUM_HEADS * max(1, d // pimirec.NUM_HEADS)
  satellite_projections = 2 * (n * d * 3 * width + d * 2 * width
                               + n * d * 2 * width + n * width * d)
  centre_projections = 2 * (d * width + (n + 1) * d * 2 * width + width * d)
  attention_parameters = d * 3 * width + 3 * width + width * d + d
  return {"flops": {
      "interval_pooling": 2 * n * span * d,
      "star_projections": (rounds * satellite_projections
                           + (rounds - 1) * centre_projections),
      "star_attention": 2 * 2 * width * (rounds * STAR_CONTEXTS * n
                                         + (rounds - 1) * (n + 1)),
      **extraction["flops"]},
          "dense_parameters": (extraction["dense_parameters"]
                               + (span - 1) * d + d
                               + (2 * rounds - 1) * attention_parameters),
          "largest_activation": max(extraction["largest_activation"],
                                    STAR_CONTEXTS * n * width, n * span),
          "largest_matmul": max(extraction["largest_matmul"],
                                (b * n, d, 3 * width), key=math.prod)}


ENCODER_COSTS = {
    "comirec-sa": _self_attentive_cost,
    "comirec-dr": lambda b, n, d, k: _capsule_cost(b, n, d, k, shared=False),
    "mind": lambda b, n, d, k: _capsule_cost(b, n, d, k, shared=True),
    "re4": _re4_cost,
    "umi": _umi_cost,
    "pimirec": _pimirec_cost,
}


def step_cost(args) -> dict:
  """FLOPs and bytes moved per sample of one training step, from the shapes.

  With B batch, n seq_len, d embedding_dim, K interests, N = items[0] - 1
  items, S negatives (N with the full sampler), C = B + S candidates per
  example (TFRS scores every example against all of them).

  FLOPs (multiply-add = 2; matmuls and other sums of products only:
  tanh, sigmoid, ReLU, squash, softmax, normalisations, the losses' exp
  and squares and Adam's arithmetic are left out), forward per sample,
  every position counted as real:
    routing MLP (ComiRec-SA)   2 n d 4d + 2 n 4d K   ([n, d] -> [n, 4d]
                                                       -> [n, K])
    interests V = A H          2 K n d               ([K, n] x [n, d])
    hard readout               2 K d                 (K interests . positive)
    logits                     2 d C                 ([d] x [d, C])
  ComiRec-DR: u_hat 2 n d Kd, MIND: 2 n d d; both: routing 5 x 2 K n d
  for 3 iterations, instead of the routing MLP and V = A H.
  Re4: ComiRec-SA's, and in training its backward flows:
    re-contrast                2 x 2 K n d + 2 K K d  (cosines with own and
                                 previous user's items; between interests)
    re-attend                  2 K n d               (z_k . x_i)
    decoder upsample           2 K d nd              (d -> n d per interest)
    decoder attention          2 K n d d + 2 K n d n  (MLP d -> d -> n heads
                                                       over the n slots)
    decoder values             2 K n d d + 2 K n n d  (S W5, then [n, n] x
                                                       [n, d])
  UMI (h = 8 hidden units, F = 2 profile fields):
    profile mean               2 n d
    user-guided attention      2 n ((F+1)d h + h)    ([e_i; p] -> h -> 1)
    u_hat, routing             2 n d Kd, 5 x 2 K n d  (as ComiRec-DR)
    refinement gate            2 K ((F+1)d h + h F)  ([p; v_k] -> h -> F)
    refinement mix             2 K ((F+1)d d/2 + d/2 d)  (-> d/2 -> d)
  PIMIRec (T = 64 interval span, R = 3 rounds, w = 8 floor(d / 8) head
  width, C = 5 contexts), then ComiRec-SA's terms:
    interval pooling           2 n (T+1) d           ([n, T+1] x [T+1, d])
    star projections           R 2 (n d 3w + d 2w + n d 2w + n w d)
                               + (R-1) 2 (d w + (n+1) d 2w + w d)
    star attention             2 x 2 w (R C n + (R-1) (n+1))  (dot products
                                 and weighted sums over the contexts)
    The interval pooling's n x n pairs (their intervals, the gather of
    their scores, the softmax, the per-interval sum of the weights) are
    elementwise and left out, as is each interval's score w . T_s (once
    per step): its one matmul is per interval, linear in n.
  Backward ~2x forward (gradients of both operands), so a step is 3x the
  forward.

  Bytes per step (float32 4 bytes, counters int64 8), divided by B:
    lookups L = B n + B + S rows (history incl. padding, positives,
      negatives); touched rows u = N (1 - exp(-L / N)) (uniform ids)
    item-embedding gathers     L x 4d   (read)
    their gradients            L x 4d x 2   (written by backward, read by
                                             the sum per row)
    lazy Adam, touched rows    u x (6 x 4d + 2 x 8)   (param, m, v read
                                 and written; last_step read and written)
      dense Adam instead       (N + 1) x 8 x 4d   (param, m, v read and
                                 written, m and v read again: every row)
    dense weights              P x 8 x 4   (Adam as above + gradient
                                 written and read; P: W1, W2, positions;
                                 the other towers' weights)
    activations                B x 4 x 4 x (n 4d + C)   (the routing
                                 MLP's hidden layer and the logits row,
                                 written and read forward and again
                                 backward; ComiRec-DR/MIND/UMI: K n d
                                 u_hat; Re4: the largest of n 4d, the
                                 decoder's K n d and K n n; PIMIRec: the
                                 largest of n 4d, C n w and n (T+1))
  Other intermediates are assumed to stay in cache, so the bytes are a
  lower bound and the bound they give an upper bound.

  Returns:
    flops_per_sample, bytes_per_sample, arithmetic_intensity (FLOPs/byte),
    forward_flops_by_term and bytes_by_term (per sample), lookups and
    touched_rows per step, largest_matmul [m, k, n].
  """
  b, n, d, k = args.batch_size, args.seq_len, args.embedding_dim, args.interests
  num_items = args.items[0] - 1
  negatives = (num_items if args.sampler == "full"
               else min(args.negatives, num_items))
  candidates = b + negatives
  encoder = ENCODER_COSTS[args.model](b, n, d, k)
  forward = {**encoder["flops"], "hard_readout": 2 * k * d,
             "logits": 2 * d * candidates}
  lookups = b * n + b + negatives
  touched = num_items * -math.expm1(-lookups / num_items)
  row = FLOAT_BYTES * d
  table_optimizer = (touched * (6 * row + 2 * COUNTER_BYTES)
                     if args.optimizer == "lazy-adam"
                     else (num_items + 1) * 8 * row)
  per_step = {
      "embedding_gathers": lookups * row,
      "embedding_gradients": 2 * lookups * row,
      "table_optimizer": table_optimizer,
      "dense_weights": 8 * FLOAT_BYTES * encoder["dense_parameters"],
      "activations": b * 4 * FLOAT_BYTES * (encoder["largest_activation"]
                                            + candidates),
  }
  bytes_by_term = {name: value / b for name, value in per_step.items()}
  flops = 3 * sum(forward.values())
  total_bytes = sum(bytes_by_term.values())
  return {"flops_per_sample": flops, "bytes_per_sample": total_bytes,
          "arithmetic_intensity": flops / total_bytes,
          "forward_flops_by_term": forward, "bytes_by_term": bytes_by_term,
          "lookups": lookups, "touched_rows": touched,
          "largest_matmul": list(encoder["largest_matmul"])}


def matmul_flops_per_second(shape) -> float:
  """float32 FLOP/s of TensorFlow matmuls [m, k] x [k, n] on all cores, the
  best of several timed calls: the m rows split in one matmul per core, run
  at once, so the figure does not depend on the thread pools' split
  between concurrent ops and threads per op (`remi_tf.threads`)."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  m, k, n = shape
  rng = np.random.default_rng(0)
  lefts = [tf.constant(rows) for rows in np.array_split(
      rng.standard_normal((m, k), np.float32),
      len(os.sched_getaffinity(0)))]
  right = tf.constant(rng.standard_normal((k, n), np.float32))
  matmuls = tf.function(lambda: [tf.matmul(left, right) for left in lefts])
  calls = 4 * PROBE_RUNS
  seconds = _common.time_calls(lambda _: matmuls(), [None] * calls,
                               warmup=PROBE_RUNS)
  return 2.0 * m * k * n / float(seconds.min())


def bandwidth_bytes_per_second() -> dict:
  """Memory bandwidth with numpy over 64 MB float32 arrays, one thread per
  core on its own slice, the best of several runs, bytes/s: copy (read
  one array, write one) and triad a = b + s c (read two, write one; in
  1 MB chunks so the second pass reads from cache)."""
  size = PROBE_ARRAY_BYTES // FLOAT_BYTES
  a, b, c = (np.full(size, value, np.float32) for value in (0.0, 1.0, 2.0))
  threads = len(os.sched_getaffinity(0))
  bounds = np.linspace(0, size, threads + 1).astype(int)
  chunk = 2**18

  def copy(start, stop):
    np.copyto(a[start:stop], b[start:stop])

  def triad(start, stop):
    for first in range(start, stop, chunk):
      last = min(first + chunk, stop)
      np.multiply(c[first:last], 3.0, out=a[first:last])
      np.add(a[first:last], b[first:last], out=a[first:last])

  rates = {}
  with concurrent.futures.ThreadPoolExecutor(threads) as pool:
    for name, kernel, arrays in (("copy", copy, 2), ("triad", triad, 3)):
      best = min(_common.timed(lambda kernel=kernel: list(
          pool.map(kernel, bounds[:-1], bounds[1:])))[0]
                 for _ in range(PROBE_RUNS))
      rates[name] = arrays * PROBE_ARRAY_BYTES / best
  return rates


def roofline(args, samples_per_second: float) -> dict:
  """The best samples/s the machine allows for `step_cost(args)` and the
  fraction of it `samples_per_second` achieves."""
  cost = step_cost(args)
  matmul = matmul_flops_per_second(cost["largest_matmul"])
  bandwidth = bandwidth_bytes_per_second()
  best_bandwidth = max(bandwidth.values())
  bounds = {"compute": matmul / cost["flops_per_sample"],
            "memory": best_bandwidth / cost["bytes_per_sample"]}
  bound = min(bounds, key=bounds.get)
  result = {
      **cost,
      "matmul_gflops": matmul / 1e9,
      "bandwidth_gbs": best_bandwidth / 1e9,
      "copy_gbs": bandwidth["copy"] / 1e9,
      "triad_gbs": bandwidth["triad"] / 1e9,
      "machine_balance": matmul / best_bandwidth,
      "compute_bound_samples_per_second": bounds["compute"],
      "memory_bound_samples_per_second": bounds["memory"],
      "bound_samples_per_second": bounds[bound],
      "bound": bound,
      "samples_per_second_remi": samples_per_second,
      "achieved_fraction": samples_per_second / bounds[bound],
  }
  _common.log(
      f"roofline: {cost['flops_per_sample'] / 1e6:.2f} MFLOP and "
      f"{cost['bytes_per_sample'] / 1e3:.1f} kB per sample; matmul "
      f"{result['matmul_gflops']:.1f} GFLOP/s, bandwidth "
      f"{result['bandwidth_gbs']:.1f} GB/s -> at most "
      f"{bounds[bound]:,.0f} samples/s ({bound}-bound); REMI achieves "
      f"{result['achieved_fraction']:.1%}")
  return result


# --- rounds in fresh processes -----------------------------------------------


def in_processes(args) -> dict:
  """The benchmark's rounds spread over args.processes fresh processes of
  this tree (--repeats rounds each), every other one building REMI's model
  first, so that neither variant always has the process as the first
  model left it. The rounds of all processes are pooled into the
  headline figures. Returns the JSON line's figures."""
  runs = []
  for number in range(args.processes):
    remi_first = number % 2 == 1
    _common.log(f"process {number + 1}/{args.processes}"
                f"{' (remi built first)' if remi_first else ''}")
    runs.append(run_tree(_common.ROOT, [
        *forwarded_flags(args, args.repeats),
        "--step-pairs", str(args.step_pairs),
        *(["--remi-first"] if remi_first else [])]))
  rates = {variant: [rate for run in runs for rate in
                     run["variants"][variant]["all_samples_per_second"]]
           for variant in VARIANTS}
  figures = headline(rates["plain"], rates["remi"])
  log_overhead(figures)
  targets = TARGETS
  if args.step_pairs:
    targets = add_step_overhead(figures, targets, {
        variant: [seconds for run in runs
                  for seconds in run["step_pair_seconds"][variant]]
        for variant in VARIANTS})
  return {
      **figures, "num_items": args.items[0] - 1,
      "processes": [{"remi_first": run["args"]["remi_first"],
                     "overhead_percent": run["overhead_percent"],
                     "step_overhead_percent":
                         run.get("step_overhead_percent"),
                     "samples_per_second_plain":
                         run["samples_per_second_plain"],
                     "samples_per_second_remi":
                         run["samples_per_second_remi"]}
                    for run in runs],
      "variants": {variant: {"all_samples_per_second": rates[variant]}
                   for variant in VARIANTS},
      "roofline": (roofline(args, figures["samples_per_second_remi"])
                   if args.roofline else None),
      "targets": {**_common.describe_targets(targets),
                  "aim_samples_per_second": AIM_SAMPLES_PER_SECOND},
      "meets_targets": _common.check_targets(figures, targets),
  }


# --- against another revision -----------------------------------------------


def forwarded_flags(args, repeats: int = 1) -> list:
  """The measurement flags with this run's values, for a fresh process of
  either tree, which measures `repeats` timed fits per variant."""
  flags = []
  for name in MEASUREMENT_FLAGS:
    value = getattr(args, name)
    flags += [f"--{name.replace('_', '-')}",
              *map(str, value if isinstance(value, list) else [value])]
  return flags + ["--repeats", str(repeats)]


def script_help(root: str) -> str:
  """`<root>/benchmarks/train_throughput.py --help` (on stderr: the
  benchmarks keep stdout for their JSON line)."""
  process = subprocess.run(
      [sys.executable, os.path.join(root, SCRIPT), "--help"], cwd=root,
      capture_output=True, text=True, check=True, timeout=300)
  return process.stdout + process.stderr


def run_tree(root: str, flags) -> dict:
  """The JSON line of `<root>/benchmarks/train_throughput.py flags`, run in
  a fresh process of this Python with `root` as working directory (its
  progress goes to this process's stderr)."""
  process = subprocess.run(
      [sys.executable, os.path.join(root, SCRIPT), *flags], cwd=root,
      stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True,
      check=False)
  if process.returncode != 0:
    raise RuntimeError(f"{SCRIPT} of {root} exited with "
                       f"{process.returncode}")
  return json.loads(process.stdout.strip().splitlines()[-1])


def compare(args) -> dict:
  """This tree against revision args.ref_commit, alternating fresh
  processes of both benchmarks. Returns the JSON line's figures."""
  flags = forwarded_flags(args)
  profile_flags = (["--profile", "--profile-calls", str(args.profile_calls)]
                   if args.profile else [])
  changed = _common.git("status", "--porcelain", "--", "remi_tf",
                        "benchmarks")
  rounds, runs = [], {NEW: [], REF: []}
  with tempfile.TemporaryDirectory() as folder, _common.git_worktree(
      args.ref_commit, os.path.join(folder, REF)) as ref_root:
    kept, dropped = _common.known_flags(flags, script_help(ref_root))
    if not kept:
      raise RuntimeError(f"the --help of {SCRIPT} at {args.compare_ref} "
                         "names none of the measurement flags")
    trees = {NEW: (_common.ROOT, flags), REF: (ref_root, kept)}
    for round_number in range(args.repeats):
      # Every other round backwards, so that a drift of the machine's load
      # does not favour the tree measured first.
      order = [NEW, REF] if round_number % 2 == 0 else [REF, NEW]
      rounds.append(order)
      for name in order:
        root, tree_flags = trees[name]
        last = name == NEW and round_number == args.repeats - 1
        _common.log(f"round {round_number + 1}/{args.repeats}: {name} "
                    f"({root})")
        runs[name].append(run_tree(
            root, [*tree_flags, *(profile_flags if last else [])]))

  variants = {}
  for variant in VARIANTS:
    key = f"samples_per_second_{variant}"
    samples = {name: [run[key] for run in runs[name]] for name in runs}
    medians = {name: statistics.median(values)
               for name, values in samples.items()}
    variants[variant] = {**samples, "new_median": medians[NEW],
                         "ref_median": medians[REF],
                         "ratio_new_over_ref": medians[NEW] / medians[REF]}
    _common.log(f"{variant}: new {medians[NEW]:,.0f} / ref "
                f"{medians[REF]:,.0f} samples/s = "
                f"{variants[variant]['ratio_new_over_ref']:.3f}")
  figures = {
      **headline(variants["plain"][NEW], variants["remi"][NEW]),
      "ratio_remi_new_over_ref": variants["remi"]["ratio_new_over_ref"],
      "ratio_plain_new_over_ref": variants["plain"]["ratio_new_over_ref"],
  }
  log_overhead(figures)
  targets = {**TARGETS, "ratio_remi_new_over_ref": COMPARE_TARGET}
  return {
      **figures, "num_items": args.items[0] - 1,
      "compare": {
          "ref": args.compare_ref,
          "commits": {NEW: _common.git("rev-parse", "HEAD"),
                      REF: args.ref_commit},
          "new_uncommitted": [line[3:] for line in changed.splitlines()],
          "worktree": ref_root,
          "flags": {NEW: flags, REF: kept}, "dropped_flags": dropped,
          "rounds": rounds, "variants": variants,
          "args": {name: runs[name][0]["args"] for name in runs},
      },
      "profile": runs[NEW][-1].get("profile"),
      "roofline": (roofline(args, figures["samples_per_second_remi"])
                   if args.roofline else None),
      "targets": {**_common.describe_targets(targets),
                  "aim_samples_per_second": AIM_SAMPLES_PER_SECOND},
      "meets_targets": _common.check_targets(figures, targets),
  }


def main(argv=None) -> int:
  args = parse_args(argv)
  if args.compare_ref is not None:
    results = compare(args)
  elif args.processes > 1:
    results = in_processes(args)
  else:
    results = measure(args)
  _common.emit("train_throughput", args, results)
  return 0


if __name__ == "__main__":
  sys.exit(main())
