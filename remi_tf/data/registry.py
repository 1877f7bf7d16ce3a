"""The datasets remi-tf knows: each name's parser and canonical source."""

import dataclasses
from typing import Callable, Optional

from remi_tf.data import (amazon_books, books_sample, csv_log, gowalla,
                          movielens, retailrocket, taobao)
from remi_tf.data.parsing import InteractionLog


@dataclasses.dataclass(frozen=True)
class DatasetSource:
  """Where a dataset's raw file comes from and how it is read.

  Attributes:
    read: parser from a raw file path to an interaction log.
    url: the canonical file, or None where there is none to download.
    archive_member: the raw file inside a downloaded archive, if any.
    manual: where a download needs a login, what the user must do instead.
    packaged: the raw file shipped inside the package, used in place (no
      download), if any.
  """

  read: Callable[[str], InteractionLog]
  url: Optional[str]
  archive_member: Optional[str] = None
  manual: Optional[str] = None
  packaged: Optional[str] = None


SOURCES = {
    "gowalla": DatasetSource(gowalla.read, gowalla.URL),
    "retailrocket": DatasetSource(
        retailrocket.read, None,
        manual=("RetailRocket is on Kaggle behind a login: download "
                f"events.csv from {retailrocket.URL}")),
    "amazon-books": DatasetSource(amazon_books.read, amazon_books.URL),
    "taobao": DatasetSource(
        taobao.read, None,
        manual=("Taobao is on Tianchi behind a login: download "
                f"UserBehavior.csv from {taobao.URL}")),
    "movielens-1m": DatasetSource(movielens.read, movielens.URL,
                                  archive_member=movielens.MEMBER),
    "books-sample": DatasetSource(csv_log.read, None,
                                  packaged=books_sample.PATH),
    "csv": DatasetSource(csv_log.read, None,
                         manual="the csv dataset is your own file"),
}


def source(name: str) -> DatasetSource:
  """Returns the source of a dataset; unknown names list the choices."""
  try:
    return SOURCES[name]
  except KeyError:
    raise ValueError(f"unknown dataset {name!r}; choose one of "
                     f"{', '.join(sorted(SOURCES))}") from None
