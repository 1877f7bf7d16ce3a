"""Every default in one table: per-dataset protocol values and the paper's
training hyper-parameters. Flags, functions and tests read them from here."""

import dataclasses
import math
from typing import Optional, Tuple


@dataclasses.dataclass(frozen=True)
class DatasetDefaults:
  """Protocol and IHN defaults of one dataset (REMI paper, Section 5.1)."""

  seq_len: int
  threshold: int
  beta: float


DATASET_DEFAULTS = {
    "gowalla": DatasetDefaults(seq_len=40, threshold=10, beta=1.0),
    "retailrocket": DatasetDefaults(seq_len=20, threshold=5, beta=0.1),
    "amazon-books": DatasetDefaults(seq_len=20, threshold=5, beta=10.0),
    "movielens-1m": DatasetDefaults(seq_len=20, threshold=5, beta=1.0),
    # ComiRec's protocol for Taobao (clicks only, sequences of 50); beta 1,
    # as the REMI code gives no Taobao value that could be checked here.
    "taobao": DatasetDefaults(seq_len=50, threshold=5, beta=1.0),
    # The Books sample shipped with the package (data/books_sample.py). Beta
    # 1, not Books' 10: in a short run on it, 10 peaks early and declines.
    "books-sample": DatasetDefaults(seq_len=20, threshold=5, beta=1.0),
    "csv": DatasetDefaults(seq_len=20, threshold=5, beta=1.0),
}

MODELS = ("comirec-sa", "comirec-dr", "mind", "umi", "youtube-dnn", "gru4rec",
          "pop", "re4", "pimirec")
SAMPLERS = ("uniform", "log-uniform", "full")
# How the sampled softmax scores candidates (RetrievalModel): by the interest
# closest to the positive, or each by its own closest interest (UMI's
# "harder negatives").
CANDIDATE_SCORINGS = ("positive-interest", "max-interest")
# "lazy-adam" updates only the item rows a batch touched (remi_tf.optimizers);
# "adam" is Keras's dense Adam.
OPTIMIZERS = ("lazy-adam", "adam")
# Item-embedding initializers: "glorot" is Glorot-normal over (N + d), as the
# original ComiRec TensorFlow code; "he" is N(0, 2/d), as the REMI PyTorch
# code (kaiming_normal_ on [N, d]). On amazon-books-38k glorot trains both
# ComiRec-SA and REMI to clearly better metrics (docs/RESULTS.md).
EMBEDDING_INITS = ("he", "glorot")

# The user split of the ComiRec protocol and the seed of its shuffle.
SPLIT_SEED = 1230
TRAIN_FRACTION, VALID_FRACTION = 0.8, 0.1
# Validation/test users reveal this share of their sequence as history.
HISTORY_FRACTION = 0.8
# Training targets are drawn from positions [MIN_TARGET_POSITION, len).
MIN_TARGET_POSITION = 4


# The objective a tower trains with unless --beta / --rr-lambda say
# otherwise. REMI (IHN with the dataset's beta, routing regularization with
# lambda REMI_RR_LAMBDA) is defined for multi-interest towers, and the paper
# applies it to all three (Table 3): so ComiRec-SA, ComiRec-DR and MIND train
# as REMI by default (`--beta 0 --rr-lambda 0`: the tower as published). The
# single-interest baselines and Pop have no interests to route between: they
# default to the plain sampled softmax (beta 0, lambda 0), as published.
REMI_MODELS = ("comirec-sa", "comirec-dr", "mind", "umi", "re4", "pimirec")
REMI_RR_LAMBDA = 100.0
# The towers that read the interactions' times (time intervals): their runs
# load the dataset with its times, and their exports take them as an input.
TIME_MODELS = ("pimirec",)


def objective_defaults(dataset: str, model: str) -> Tuple[float, float]:
  """(beta, rr_lambda) of `model` on `dataset` when not given."""
  if model in REMI_MODELS:
    return DATASET_DEFAULTS[dataset].beta, REMI_RR_LAMBDA
  return 0.0, 0.0


# The valid range of every numeric setting (names as the train.py flags):
# (lowest value, whether the lowest value itself is allowed). Values must
# also be finite; seeds must fit NumPy's 32-bit seed.
RANGES = {
    "interests": (1, True), "embedding_dim": (1, True), "seq_len": (1, True),
    "threshold": (1, True), "negatives": (1, True), "batch_size": (1, True),
    "max_steps": (1, True), "eval_every": (1, True), "patience": (1, True),
    "seed": (0, True), "beta": (0.0, True), "rr_lambda": (0.0, True),
    "learning_rate": (0.0, False), "eval_users": (1, True),
}
MAX_SEED = 2**32 - 1


def check_range(name: str, value) -> None:
  """Raises ValueError, naming the flag, if `value` is out of its range."""
  lowest, inclusive = RANGES[name]
  flag = f"--{name.replace('_', '-')}"
  if not math.isfinite(value):
    raise ValueError(f"{flag} must be a finite number, got {value}")
  if value < lowest or (value == lowest and not inclusive):
    relation = ">=" if inclusive else ">"
    raise ValueError(f"{flag} must be {relation} {lowest}, got {value}")
  if name == "seed" and value > MAX_SEED:
    raise ValueError(f"{flag} must be <= {MAX_SEED}, got {value}")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """What defines a user tower and its training objective."""

  model: str = "comirec-sa"
  interests: int = 4
  embedding_dim: int = 64
  embedding_init: str = "glorot"
  seq_len: int = 20
  beta: float = 0.0
  rr_lambda: float = REMI_RR_LAMBDA
  negatives: int = 1280
  sampler: str = "uniform"
  candidate_scoring: str = "positive-interest"


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """How long and how fast to train, and how to select the best model."""

  batch_size: int = 128
  learning_rate: float = 1e-3
  optimizer: str = "lazy-adam"
  max_steps: int = 1_000_000
  eval_every: int = 1000
  patience: int = 50
  seed: int = 2023
  # Validation and test on the first this many users of each split (a
  # seeded random sample); None, the protocol, takes them all. Exact
  # evaluation costs a pass over the whole catalog per user, so with
  # millions of items a sample keeps it within hours of training.
  eval_users: Optional[int] = None
  topn: tuple = (20, 50)
  selection_metric: str = "recall@50"
