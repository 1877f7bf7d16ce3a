"""Shared pieces of the raw-format parsers: chunked reads whose errors name
the file and the line, and the interning of raw ids into integer codes.

Every parser returns an `InteractionLog`: one row per interaction, in file
order, as integer arrays (user code, item code, timestamp) plus the raw-id
vocabularies in order of first appearance. Parsers read their file in
chunks and keep only the fields they need, so the memory they take grows
with the number of interactions and distinct ids, not with the size of the
raw text.

Delimited formats are declared as a `DelimitedFormat` and read by
`read_delimited_log`: first by pyarrow's streaming CSV reader (fast, in C++,
but its errors name no line); if that reader or any check fails, the file
is read again by pandas in chunks of `CHUNK_LINES` lines, whose errors name
the file and the line.
"""

import dataclasses
import re
from typing import Dict, Iterator, Optional, Sequence, Tuple

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv

# Lines per chunk: large enough that per-chunk overhead is small, small
# enough that a chunk of raw strings stays near 100 MB.
CHUNK_LINES = 500_000
# pyarrow keeps a bounded number of blocks in flight: small blocks keep
# that to a few hundred MB.
BLOCK_BYTES = 8 << 20


class RawFormatError(ValueError):
  """A raw file does not follow its format; names the file and the line."""

  def __init__(self, path: str, line: Optional[int], message: str):
    where = f"{path}, line {line}" if line is not None else str(path)
    super().__init__(f"{where}: {message}")
    self.path = path
    self.line = line


@dataclasses.dataclass(frozen=True)
class InteractionLog:
  """Interactions in file order, with ids interned to integer codes.

  Attributes:
    user_codes: int32 [n]; the raw id of row r's user is
      `user_vocab[user_codes[r]]`.
    item_codes: int32 [n], likewise into `item_vocab`.
    timestamps: int64 [n], any unit (only their order matters).
    user_vocab: str [num_users], raw user ids by first appearance.
    item_vocab: str [num_items], raw item ids by first appearance.
  """

  user_codes: np.ndarray
  item_codes: np.ndarray
  timestamps: np.ndarray
  user_vocab: np.ndarray
  item_vocab: np.ndarray

  def __len__(self) -> int:
    return len(self.timestamps)

  def rows(self):
    """[(user, item, timestamp)] with raw ids, in file order (for small
    logs: tests and inspection)."""
    return [(str(self.user_vocab[user]), str(self.item_vocab[item]),
             int(stamp)) for user, item, stamp in
            zip(self.user_codes, self.item_codes, self.timestamps)]


class _Interner:
  """Gives each distinct raw id a code 0, 1, ... in order of first
  appearance, over successive chunks."""

  def __init__(self):
    self._codes: Dict[str, int] = {}

  def codes(self, values) -> np.ndarray:
    """int32 [len(values)]: the codes of a chunk of raw ids (str; a pyarrow
    array, a pandas Series or anything `pyarrow.array` takes)."""
    if not isinstance(values, (pa.Array, pa.ChunkedArray)):
      values = pa.array(values, type=pa.string())
    encoded = pc.dictionary_encode(values)
    if isinstance(encoded, pa.ChunkedArray):
      encoded = encoded.combine_chunks()
    table = self._codes
    # The dictionary is in order of first appearance within the chunk, so
    # new ids get their codes in order of first appearance in the file.
    uniques = encoded.dictionary.to_pylist()
    known = np.fromiter((table.setdefault(value, len(table))
                         for value in uniques), dtype=np.int32,
                        count=len(uniques))
    return known[encoded.indices.to_numpy(zero_copy_only=False)]

  def vocab(self) -> np.ndarray:
    """str [num_ids]: the raw ids, by code."""
    return np.array(list(self._codes), dtype=str)


class LogBuilder:
  """Collects a parser's chunks into an `InteractionLog`."""

  def __init__(self):
    self._users, self._items = _Interner(), _Interner()
    self._columns = ([], [], [])  # user codes, item codes, timestamps

  def add(self, users, items, timestamps) -> None:
    """Appends a chunk: raw user and item ids (str) and int timestamps."""
    for column, values in zip(self._columns, (
        self._users.codes(users), self._items.codes(items),
        np.asarray(timestamps, dtype=np.int64))):
      column.append(values)

  def build(self) -> InteractionLog:
    """The log of every chunk added, in order."""
    whole = []
    for chunks, dtype in zip(self._columns, (np.int32, np.int32, np.int64)):
      whole.append(np.concatenate(chunks) if chunks else np.zeros(0, dtype))
      chunks.clear()  # one column's chunks and whole copy at a time
    return InteractionLog(*whole, user_vocab=self._users.vocab(),
                          item_vocab=self._items.vocab())


def interaction_log(users, items, timestamps) -> InteractionLog:
  """An `InteractionLog` from whole columns of raw ids and timestamps."""
  builder = LogBuilder()
  builder.add(users, items, timestamps)
  return builder.build()


@dataclasses.dataclass(frozen=True)
class DelimitedFormat:
  """A delimited raw format and how its rows become interactions.

  Attributes:
    names: the columns, in file order.
    sep: the field separator (the fast reader needs one character).
    header: whether the first line names the columns.
    user, item, timestamp: the columns of the user id, the item id and the
      time.
    integers: columns that must be integers, checked in this order (the
      timestamp among them when it is an integer).
    time_format: the timestamp column's strptime format (UTC), checked
      after `integers`; None when the timestamp is an integer.
    timestamp_divisor: integer timestamps are floor-divided by it (e.g.
      1000 for milliseconds).
    keep: (column, value): only rows whose column has that value are
      interactions (checked after every row is).
    required: the columns that must not be empty (default all).
    engine: the pandas engine of the careful reader ("python" for a
      multi-character separator).
  """

  names: Tuple[str, ...]
  sep: str
  header: bool
  user: str
  item: str
  timestamp: str
  integers: Tuple[str, ...] = ()
  time_format: Optional[str] = None
  timestamp_divisor: int = 1
  keep: Optional[Tuple[str, str]] = None
  required: Optional[Tuple[str, ...]] = None
  engine: str = "c"


class _Unvouched(Exception):
  """The fast reader met something it cannot vouch for."""


def read_delimited_log(path: str, form: DelimitedFormat) -> InteractionLog:
  """Reads a delimited raw file into an interaction log.

  Raises:
    RawFormatError: the file does not follow the format (names the line).
  """
  if len(form.sep) == 1:
    try:
      return _read_fast(path, form)
    except (_Unvouched, pa.ArrowException, OSError, EOFError):
      pass  # read again below, carefully, to name the line
  return _read_careful(path, form)


def _read_fast(path: str, form: DelimitedFormat) -> InteractionLog:
  """pyarrow's streaming CSV reader; raises `_Unvouched` (or pyarrow's
  error) on anything the careful reader should look at."""
  required = form.required or form.names
  options = dict(
      read_options=pa_csv.ReadOptions(
          column_names=None if form.header else list(form.names),
          block_size=BLOCK_BYTES),
      parse_options=pa_csv.ParseOptions(delimiter=form.sep, quote_char=False,
                                        escape_char=False),
      convert_options=pa_csv.ConvertOptions(
          column_types={name: pa.string() for name in form.names},
          include_columns=list(form.names), strings_can_be_null=False))
  log = LogBuilder()
  with pa.input_stream(path, compression="detect") as stream:
    for batch in pa_csv.open_csv(stream, **options):
      columns = dict(zip(batch.schema.names, batch.columns))
      for name in required:
        if pc.any(pc.equal(columns[name], "")).as_py():
          raise _Unvouched(name)
      numbers = {name: pc.cast(columns[name], pa.int64())
                 for name in form.integers}
      if form.time_format is None:
        stamps = numbers[form.timestamp]
      else:
        stamps = pc.strptime(columns[form.timestamp],
                             format=form.time_format, unit="s").cast(pa.int64())
      stamps = stamps.to_numpy() // form.timestamp_divisor
      users, items = columns[form.user], columns[form.item]
      if form.keep is not None:
        kept = pc.equal(columns[form.keep[0]], form.keep[1])
        users, items = users.filter(kept), items.filter(kept)
        stamps = stamps[kept.to_numpy(zero_copy_only=False)]
      log.add(users, items, stamps)
  return log.build()


def _read_careful(path: str, form: DelimitedFormat) -> InteractionLog:
  """pandas in chunks; errors name the file and the line."""
  log = LogBuilder()
  for frame in read_delimited(path, sep=form.sep, names=form.names,
                              header=form.header, usecols=form.required,
                              engine=form.engine):
    numbers = {name: to_int64(frame[name], path, name)
               for name in form.integers}
    if form.time_format is None:
      stamps = numbers[form.timestamp]
    else:
      stamps = to_epoch_seconds(frame[form.timestamp], path, form.timestamp,
                                form.time_format)
    stamps = stamps // form.timestamp_divisor
    users, items = frame[form.user], frame[form.item]
    if form.keep is not None:
      kept = (frame[form.keep[0]] == form.keep[1]).to_numpy()
      users, items, stamps = users[kept], items[kept], stamps[kept]
    log.add(users, items, stamps)
  return log.build()


def read_delimited(path: str, *, sep: str, names: Sequence[str],
                   header: bool, usecols: Optional[Sequence[str]] = None,
                   engine: str = "c") -> Iterator[pd.DataFrame]:
  """Reads a delimited text file (plain or .gz) as strings, in chunks.

  Args:
    path: the file.
    sep: the field separator.
    names: the expected column names, in file order.
    header: whether the first line is a header naming those columns.
    usecols: the columns to keep (default all).
    engine: pandas parser engine ("python" for multi-character separators).

  Yields:
    DataFrames of str columns, at most `CHUNK_LINES` rows each, whose index
    is the 1-based line number; blank lines are dropped.

  Raises:
    RawFormatError: a line with the wrong number of fields, a missing
      field, or a missing header column.
  """
  try:
    reader = pd.read_csv(
        path, sep=sep, header=0 if header else None,
        names=None if header else list(names), dtype=str,
        keep_default_na=False, na_filter=False, skip_blank_lines=False,
        compression="infer", engine=engine, quoting=3,
        chunksize=CHUNK_LINES)
    with reader:
      first_line = 2 if header else 1
      for frame in reader:
        if header:
          _check_header(frame, names, path)
        frame.index = frame.index + first_line
        yield _checked_chunk(frame, usecols, path)
  except pd.errors.ParserError as error:
    match = re.search(r"line (\d+)", str(error))
    line = int(match.group(1)) if match else None
    raise RawFormatError(path, line, f"malformed line ({error})") from None
  except (UnicodeDecodeError, EOFError, OSError) as error:
    raise RawFormatError(path, None, f"cannot read: {error}") from None


def _check_header(frame: pd.DataFrame, names: Sequence[str],
                  path: str) -> None:
  missing = [name for name in names if name not in frame.columns]
  if missing:
    raise RawFormatError(
        path, 1, f"header lacks column(s) {missing}; expected {list(names)}")


def _checked_chunk(frame: pd.DataFrame, usecols: Optional[Sequence[str]],
                   path: str) -> pd.DataFrame:
  """Drops blank lines and unused columns; raises on an empty field."""
  if usecols is not None:
    frame = frame[list(usecols)]
  blank = (frame == "").all(axis=1)
  if blank.any():
    frame = frame[~blank]
  for column in frame.columns:
    empty = frame[column] == ""
    if empty.any():
      raise RawFormatError(path, int(frame.index[empty.argmax()]),
                           f"missing field '{column}'")
  return frame


def to_int64(values: pd.Series, path: str, field: str) -> np.ndarray:
  """Parses an integer column; the error names the first bad line."""
  numbers = pd.to_numeric(values, errors="coerce")
  bad = numbers.isna().to_numpy()
  if bad.any():
    line = int(values.index[bad.argmax()])
    raise RawFormatError(path, line,
                         f"field '{field}' is not a number: {values[line]!r}")
  return numbers.to_numpy().astype(np.int64)


def to_epoch_seconds(values: pd.Series, path: str, field: str,
                     time_format: str) -> np.ndarray:
  """Parses a UTC time column into unix seconds; errors name the line."""
  times = pd.to_datetime(values, format=time_format, errors="coerce", utc=True)
  bad = times.isna().to_numpy()
  if bad.any():
    line = int(values.index[bad.argmax()])
    raise RawFormatError(path, line,
                         f"field '{field}' is not a time: {values[line]!r}")
  return times.dt.as_unit("s").astype("int64").to_numpy()
