"""SNAP Gowalla check-ins (`loc-gowalla_totalCheckins.txt.gz`).

One check-in a line, tab-separated:
`user  time (ISO 8601 UTC)  latitude  longitude  location id`.
Every check-in is one interaction; repeat visits are kept.
"""

from remi_tf.data import parsing

URL = "https://snap.stanford.edu/data/loc-gowalla_totalCheckins.txt.gz"
COLUMNS = ("user", "time", "latitude", "longitude", "location")


def read(path: str) -> parsing.InteractionLog:
  """Reads the raw check-in file into an interaction log (user, item, time)."""
  log = parsing.LogBuilder()
  for frame in parsing.read_delimited(path, sep="\t", names=COLUMNS,
                                      header=False):
    parsing.to_int64(frame["user"], path, "user")
    parsing.to_int64(frame["location"], path, "location")
    seconds = parsing.to_epoch_seconds(frame["time"], path, "time",
                                       "%Y-%m-%dT%H:%M:%SZ")
    log.add(frame["user"], frame["location"], seconds)
  return log.build()
