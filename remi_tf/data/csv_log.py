"""A user's own log: CSV (or .csv.gz) with header `user_id,item_id,timestamp`.

Ids are any strings; timestamps are integers (any unit, only their order
matters).
"""

from remi_tf.data import parsing

URL = None
COLUMNS = ("user_id", "item_id", "timestamp")


def read(path: str) -> parsing.InteractionLog:
  """Reads the CSV into an interaction log."""
  log = parsing.LogBuilder()
  for frame in parsing.read_delimited(path, sep=",", names=COLUMNS,
                                      header=True, usecols=COLUMNS):
    seconds = parsing.to_int64(frame["timestamp"], path, "timestamp")
    log.add(frame["user_id"], frame["item_id"], seconds)
  return log.build()
