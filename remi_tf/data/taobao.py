"""Taobao user behaviour (Tianchi `UserBehavior.csv`).

No header; one behaviour a line, comma-separated:
`user,item,category,behavior,timestamp` (unix seconds). The behaviours are
`pv` (a click, i.e. a page view), `buy`, `cart` and `fav`; as in ComiRec and
REMI, only clicks are interactions.
"""

from remi_tf.data import parsing

URL = "https://tianchi.aliyun.com/dataset/649"
COLUMNS = ("user", "item", "category", "behavior", "timestamp")
CLICK = "pv"

FORMAT = parsing.DelimitedFormat(
    names=COLUMNS, sep=",", header=False, user="user", item="item",
    timestamp="timestamp", integers=("user", "item", "timestamp"),
    keep=("behavior", CLICK), required=("user", "item", "behavior",
                                        "timestamp"))


def read(path: str) -> parsing.InteractionLog:
  """Reads `UserBehavior.csv` into an interaction log of its clicks."""
  return parsing.read_delimited_log(path, FORMAT)
