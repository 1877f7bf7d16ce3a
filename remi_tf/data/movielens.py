"""MovieLens 1M `ratings.dat`: `UserID::MovieID::Rating::Timestamp`.

Every rating is an interaction, whatever its value.
"""

from remi_tf.data import parsing

URL = "https://files.grouplens.org/datasets/movielens/ml-1m.zip"
MEMBER = "ml-1m/ratings.dat"
COLUMNS = ("user", "movie", "rating", "timestamp")


def read(path: str) -> parsing.InteractionLog:
  """Reads `ratings.dat` into an interaction log."""
  log = parsing.LogBuilder()
  for frame in parsing.read_delimited(path, sep="::", names=COLUMNS,
                                      header=False, engine="python"):
    parsing.to_int64(frame["user"], path, "user")
    parsing.to_int64(frame["movie"], path, "movie")
    seconds = parsing.to_int64(frame["timestamp"], path, "timestamp")
    log.add(frame["user"], frame["movie"], seconds)
  return log.build()
