"""The raw-format parsers on hand-written fixtures: values, errors, .gz."""

import calendar
import gzip
import os
import shutil
import time

import numpy as np
import pyarrow as pa
import pytest

from conftest import FIXTURES
from remi_tf import config
from remi_tf.data import (DATASETS, RawFormatError, books_sample, csv_log,
                          gowalla, load_dataset, parsing, registry,
                          retailrocket, taobao)

RAW = os.path.join(FIXTURES, "raw")


def raw(name):
  return os.path.join(RAW, name)


def read(dataset, path):
  return registry.source(dataset).read(path)


def utc(text):
  """Unix seconds of an ISO 8601 UTC time, computed without pandas."""
  return calendar.timegm(time.strptime(text, "%Y-%m-%dT%H:%M:%SZ"))


def rows(log):
  """The log as [(user, item, timestamp)], checking the log's layout:
  integer codes into vocabularies of distinct str ids, numbered in order
  of first appearance."""
  assert log.user_codes.dtype == log.item_codes.dtype == np.int32
  assert log.timestamps.dtype == np.int64
  for codes, vocab in ((log.user_codes, log.user_vocab),
                       (log.item_codes, log.item_vocab)):
    assert vocab.dtype.kind == "U"
    assert len(set(vocab.tolist())) == len(vocab)
    _, first = np.unique(codes, return_index=True)
    assert np.array_equal(codes[np.sort(first)], np.arange(len(vocab)))
  return log.rows()


def test_registry_knows_every_dataset():
  assert set(DATASETS) == {"gowalla", "retailrocket", "amazon-books",
                           "taobao", "movielens-1m", "books-sample", "csv"}
  assert set(DATASETS) == set(registry.SOURCES)
  assert set(DATASETS) == set(config.DATASET_DEFAULTS)


def test_books_sample_ships_with_the_package(tmp_path):
  path = registry.source("books-sample").packaged
  assert path == books_sample.PATH
  assert os.path.isfile(path) and os.path.getsize(path) < 1_000_000
  # No raw file given, nothing downloaded: the packaged file, as documented
  # in remi_tf/data/samples/README.md.
  dataset = load_dataset("books-sample", cache_dir=str(tmp_path))
  assert dataset.stats == {
      "users": 10608, "items": 13260, "interactions": 136265,
      "mean_sequence_length": pytest.approx(12.845, abs=1e-3),
      "train_users": 8486, "valid_users": 1061, "test_users": 1061,
      "threshold": 5}
  assert os.listdir(tmp_path) == ["preprocessed"]


@pytest.mark.parametrize("name", ["netflix", "Gowalla", ""])
def test_unknown_dataset_lists_the_choices(name):
  with pytest.raises(ValueError) as error:
    registry.source(name)
  message = str(error.value)
  assert repr(name) in message
  for choice in DATASETS:
    assert choice in message


def test_load_dataset_rejects_unknown_name(tmp_path):
  with pytest.raises(ValueError, match="choose one of"):
    load_dataset("netflix", raw_file=raw("log.csv"), cache_dir=str(tmp_path))


# Every line of gowalla.txt: (user, time, location), newest first per user.
GOWALLA_LINES = [
    ("0", "2010-10-19T23:55:27Z", "22847"),
    ("0", "2010-10-18T22:17:43Z", "420315"),
    ("0", "2010-10-17T23:42:03Z", "316637"),
    ("0", "2010-10-17T19:26:05Z", "22847"),
    ("1", "2010-07-24T13:45:06Z", "420315"),
    ("1", "2010-07-24T13:44:58Z", "1500177"),
    ("1", "2010-07-22T13:44:26Z", "22847"),
    ("2", "2009-02-04T05:17:38Z", "8904"),
]


@pytest.mark.parametrize("filename", ["gowalla.txt", "gowalla.txt.gz"])
def test_gowalla(filename):
  log = read("gowalla", raw(filename))
  # Every check-in, repeats included, in file order; time in unix seconds.
  assert rows(log) == [(user, location, utc(when))
                       for user, when, location in GOWALLA_LINES]
  assert log.timestamps[0] == 1287532527  # 2010-10-19T23:55:27Z
  # Check-ins 8 seconds apart stay distinct (second resolution).
  assert log.timestamps[4] - log.timestamps[5] == 8


def test_retailrocket_keeps_views_in_seconds():
  log = read("retailrocket", raw("events.csv"))
  # addtocart and transaction rows (item 253185) are dropped; an empty
  # transactionid is not a missing field; ms are floored to seconds.
  assert rows(log) == [
      ("257597", "355908", 1433221332),
      ("992329", "248676", 1433224214),
      ("111016", "318965", 1433221999),
      ("257597", "318965", 1433221337),
      ("951259", "367447", 1433221384),
  ]


@pytest.mark.parametrize("filename",
                         ["reviews_Books_5.json", "reviews_Books_5.json.gz"])
def test_amazon_books(filename):
  log = read("amazon-books", raw(filename))
  # asin ids keep their leading zeros; every review counts, whatever its
  # rating; the other fields are ignored.
  assert rows(log) == [
      ("A10000012B7CGYKOMPQ4L", "000100039X", 1355616000),
      ("A2S166WSCFIFP5", "000100039X", 1071100800),
      ("A10000012B7CGYKOMPQ4L", "0001055178", 1355616000),
      ("A1BM81XB4QHOA3", "0001055178", 1390003200),
  ]


def test_taobao_keeps_clicks():
  log = read("taobao", raw("UserBehavior.csv"))
  # Only pv (click) rows, in file order; buy, cart and fav rows are dropped;
  # the category is ignored; a repeated click counts again.
  assert rows(log) == [
      ("1", "2268318", 1511544070),
      ("1", "2333346", 1511561733),
      ("100", "2576651", 1511572885),
      ("1", "2268318", 1511561733),
      ("1000014", "2576651", 1511751023),
  ]


def test_taobao_needs_a_manual_download():
  spec = registry.source("taobao")
  assert spec.url is None
  assert "UserBehavior.csv" in spec.manual and "login" in spec.manual


@pytest.mark.parametrize("dataset,filename", [
    ("taobao", "UserBehavior.csv"), ("gowalla", "gowalla.txt.gz"),
    ("retailrocket", "events.csv"), ("amazon-books", "reviews_Books_5.json"),
    ("movielens-1m", "ratings.dat"), ("csv", "log.csv")])
def test_chunks_make_the_same_log(monkeypatch, dataset, filename):
  whole = read(dataset, raw(filename))
  monkeypatch.setattr(parsing, "CHUNK_LINES", 2)
  # Lines are under 300 bytes (Amazon's) or 64 (the others').
  monkeypatch.setattr(parsing, "BLOCK_BYTES",
                      300 if dataset == "amazon-books" else 64)
  chunked = read(dataset, raw(filename))
  assert rows(chunked) == rows(whole)
  assert np.array_equal(chunked.user_vocab, whole.user_vocab)
  assert np.array_equal(chunked.item_vocab, whole.item_vocab)


@pytest.mark.parametrize("dataset,filename,line,word", [
    ("taobao", "UserBehavior_bad_timestamp.csv", 6, "timestamp"),
    ("taobao", "UserBehavior_too_many_fields.csv", 5, "malformed"),
    ("gowalla", "gowalla_bad_time.txt", 4, "time"),
    ("amazon-books", "reviews_missing_time.json", 4, "unixReviewTime"),
    ("csv", "log_bad_timestamp.csv", 4, "timestamp"),
])
def test_chunks_keep_line_numbers(monkeypatch, dataset, filename, line, word):
  monkeypatch.setattr(parsing, "CHUNK_LINES", 2)
  monkeypatch.setattr(parsing, "BLOCK_BYTES", 300)
  path = raw(filename)
  with pytest.raises(RawFormatError) as error:
    read(dataset, path)
  assert_names_line(error.value, path, line, word)


@pytest.mark.parametrize("module,filename", [
    (taobao, "UserBehavior.csv"), (gowalla, "gowalla.txt"),
    (gowalla, "gowalla.txt.gz"), (retailrocket, "events.csv"),
    (csv_log, "log.csv"), (csv_log, "log.csv.gz")])
def test_fast_and_careful_readers_agree(monkeypatch, module, filename):
  # Good files take the fast (pyarrow) reader, in several blocks; the
  # careful (pandas) one, which names bad lines, reads them the same.
  monkeypatch.setattr(parsing, "BLOCK_BYTES", 64)
  fast = parsing._read_fast(raw(filename), module.FORMAT)  # pylint: disable=protected-access
  careful = parsing._read_careful(raw(filename), module.FORMAT)  # pylint: disable=protected-access
  assert rows(fast) == rows(careful)
  assert np.array_equal(fast.user_vocab, careful.user_vocab)
  assert np.array_equal(fast.item_vocab, careful.item_vocab)


@pytest.mark.parametrize("filename", [
    "UserBehavior_too_few_fields.csv", "UserBehavior_too_many_fields.csv",
    "UserBehavior_bad_user.csv", "UserBehavior_bad_item.csv",
    "UserBehavior_bad_timestamp.csv"])
def test_fast_reader_leaves_bad_lines_to_the_careful_one(filename):
  with pytest.raises((parsing._Unvouched, pa.ArrowException)):  # pylint: disable=protected-access
    parsing._read_fast(raw(filename), taobao.FORMAT)  # pylint: disable=protected-access


def test_movielens_every_rating_counts():
  log = read("movielens-1m", raw("ratings.dat"))
  assert rows(log) == [
      ("1", "1193", 978300760),
      ("1", "661", 978302109),
      ("1", "914", 978301968),
      ("2", "1193", 978298413),  # rating 1
      ("2", "3105", 978298673),
      ("3", "661", 978297039),  # rating 2
  ]


@pytest.mark.parametrize("filename", ["log.csv", "log.csv.gz"])
def test_csv_ids_are_strings(filename):
  log = read("csv", raw(filename))
  assert rows(log) == [
      ("alice", "book-7", 30),
      ("bob", "book-7", 10),
      ("alice", "0042", 20),  # not the number 42
      ("carol", "book-9", 10),
      ("bob", "0042", 10),
  ]


def test_csv_extra_columns_and_column_order(tmp_path):
  path = tmp_path / "log.csv"
  path.write_text("timestamp,rating,item_id,user_id\n"
                  "5,4.5,i1,u1\n7,1,i2,u2\n")
  assert rows(read("csv", str(path))) == [("u1", "i1", 5), ("u2", "i2", 7)]


def test_blank_lines_are_skipped_and_line_numbers_kept(tmp_path):
  path = tmp_path / "log.csv"
  path.write_text("user_id,item_id,timestamp\nu1,i1,1\n\nu2,i2,2\n\n"
                  "u3,i3,soon\n")
  with pytest.raises(RawFormatError) as error:
    read("csv", str(path))
  assert error.value.line == 6
  path.write_text("user_id,item_id,timestamp\nu1,i1,1\n\nu2,i2,2\n")
  assert rows(read("csv", str(path))) == [("u1", "i1", 1), ("u2", "i2", 2)]


# (dataset, fixture, line of the error, a word the message must contain)
MALFORMED = [
    ("gowalla", "gowalla_too_few_fields.txt", 3, "location"),
    ("gowalla", "gowalla_too_many_fields.txt", 4, "malformed"),
    ("gowalla", "gowalla_bad_user.txt", 2, "user"),
    ("gowalla", "gowalla_bad_time.txt", 4, "time"),
    ("gowalla", "gowalla_bad_location.txt", 2, "location"),
    ("retailrocket", "events_too_many_fields.csv", 5, "malformed"),
    ("retailrocket", "events_too_few_fields.csv", 4, "itemid"),
    ("retailrocket", "events_bad_visitor.csv", 4, "visitorid"),
    ("retailrocket", "events_bad_timestamp.csv", 3, "timestamp"),
    ("retailrocket", "events_bad_header.csv", 1, "visitorid"),
    ("amazon-books", "reviews_missing_asin.json", 3, "asin"),
    ("amazon-books", "reviews_missing_reviewer.json", 2, "reviewerID"),
    ("amazon-books", "reviews_missing_time.json", 4, "unixReviewTime"),
    ("amazon-books", "reviews_no_time_anywhere.json", 1, "unixReviewTime"),
    ("amazon-books", "reviews_broken_json.json", 3, "JSON"),
    ("amazon-books", "reviews_bad_time.json", 2, "unixReviewTime"),
    ("taobao", "UserBehavior_too_few_fields.csv", 3, "timestamp"),
    ("taobao", "UserBehavior_too_many_fields.csv", 5, "malformed"),
    ("taobao", "UserBehavior_bad_user.csv", 2, "user"),
    ("taobao", "UserBehavior_bad_item.csv", 4, "item"),
    ("taobao", "UserBehavior_bad_timestamp.csv", 6, "timestamp"),
    ("movielens-1m", "ratings_too_few_fields.dat", 3, ""),
    ("movielens-1m", "ratings_too_many_fields.dat", 4, "malformed"),
    ("movielens-1m", "ratings_bad_movie.dat", 2, "movie"),
    ("csv", "log_bad_header.csv", 1, "item_id"),
    ("csv", "log_bad_timestamp.csv", 4, "timestamp"),
    ("csv", "log_missing_item.csv", 3, "item_id"),
    ("csv", "log_too_many_fields.csv", 3, "malformed"),
]


def assert_names_line(error, path, line, word):
  message = str(error)
  assert isinstance(error, ValueError)
  assert error.path == path
  assert error.line == line
  assert message.startswith(f"{path}, line {line}: "), message
  assert word in message


@pytest.mark.parametrize("dataset,filename,line,word", MALFORMED,
                         ids=[case[1] for case in MALFORMED])
def test_malformed_line_is_named(dataset, filename, line, word):
  path = raw(filename)
  with pytest.raises(RawFormatError) as error:
    read(dataset, path)
  assert_names_line(error.value, path, line, word)


@pytest.mark.parametrize("dataset,filename,line,word", [
    ("gowalla", "gowalla_bad_time.txt", 4, "time"),
    ("gowalla", "gowalla_too_many_fields.txt", 4, "malformed"),
    ("taobao", "UserBehavior_bad_item.csv", 4, "item"),
    ("amazon-books", "reviews_broken_json.json", 3, "JSON"),
    ("amazon-books", "reviews_missing_asin.json", 3, "asin"),
    ("movielens-1m", "ratings_bad_movie.dat", 2, "movie"),
    ("csv", "log_missing_item.csv", 3, "item_id"),
])
def test_malformed_gz_line_is_named(tmp_path, dataset, filename, line, word):
  path = str(tmp_path / (filename + ".gz"))
  with open(raw(filename), "rb") as plain, gzip.open(path, "wb") as packed:
    shutil.copyfileobj(plain, packed)
  with pytest.raises(RawFormatError) as error:
    read(dataset, path)
  assert_names_line(error.value, path, line, word)


def test_unreadable_gz_is_a_format_error(tmp_path):
  path = str(tmp_path / "checkins.txt.gz")
  with open(path, "wb") as out:
    out.write(b"this is not gzip data\n")
  with pytest.raises(RawFormatError) as error:
    read("gowalla", path)
  assert error.value.line is None
  assert str(error.value).startswith(f"{path}: cannot read")
