"""SNAP Gowalla check-ins (`loc-gowalla_totalCheckins.txt.gz`).

One check-in a line, tab-separated:
`user  time (ISO 8601 UTC)  latitude  longitude  location id`.
Every check-in is one interaction; repeat visits are kept.
"""

from remi_tf.data import parsing

URL = "https://snap.stanford.edu/data/loc-gowalla_totalCheckins.txt.gz"
COLUMNS = ("user", "time", "latitude", "longitude", "location")

FORMAT = parsing.DelimitedFormat(
    names=COLUMNS, sep="\t", header=False, user="user", item="location",
    timestamp="time", integers=("user", "location"),
    time_format="%Y-%m-%dT%H:%M:%SZ")


def read(path: str) -> parsing.InteractionLog:
  """Reads the raw check-in file into an interaction log (user, item, time)."""
  return parsing.read_delimited_log(path, FORMAT)
