"""MovieLens 1M `ratings.dat`: `UserID::MovieID::Rating::Timestamp`.

Every rating is an interaction, whatever its value.
"""

from remi_tf.data import parsing

URL = "https://files.grouplens.org/datasets/movielens/ml-1m.zip"
MEMBER = "ml-1m/ratings.dat"
COLUMNS = ("user", "movie", "rating", "timestamp")

FORMAT = parsing.DelimitedFormat(
    names=COLUMNS, sep="::", header=False, user="user", item="movie",
    timestamp="timestamp", integers=("user", "movie", "timestamp"),
    engine="python")


def read(path: str) -> parsing.InteractionLog:
  """Reads `ratings.dat` into an interaction log."""
  return parsing.read_delimited_log(path, FORMAT)
