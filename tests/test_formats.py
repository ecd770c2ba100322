"""Readers for MS MARCO, BEIR and DPR files: exact parses, .gz, and errors that name file:line."""
from __future__ import annotations

import gzip
import json
from collections.abc import Iterator

import pytest

from edistill import cache
from edistill.data.formats import beir, dpr, msmarco, reading
from edistill.data.formats.reading import Report
from edistill.data.types import DataError, Document


def _write(path, text: str):
  """Writes ``text`` as UTF-8 bytes (no newline translation), gzipped when the name ends in .gz."""
  data = text.encode("utf-8")
  path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)
  return path


def _error(fn, path, *args, **kwargs) -> str:
  with pytest.raises(DataError) as e:
    result = fn(path, *args, **kwargs)
    if isinstance(result, Iterator):
      list(result)
  return str(e.value)


# ----------------------------------------------------------------------------------- MS MARCO
COLLECTION = ('0\tThe "presence of communication amid scientific minds\n'
              '1\tCafé — naïve résumé; a stray\rcarriage return and a \'quote\n'
              '\n'
              '7\t\n')
EXPECTED_COLLECTION = [
    Document("0", 'The "presence of communication amid scientific minds'),
    Document("1", "Café — naïve résumé; a stray\rcarriage return and a 'quote"),
    Document("7", ""),
]


@pytest.mark.parametrize("name", ["collection.tsv", "collection.tsv.gz"])
def test_msmarco_collection_keeps_quotes_and_odd_characters(tmp_path, name):
  path = _write(tmp_path / name, COLLECTION)
  assert list(msmarco.iter_collection(path)) == EXPECTED_COLLECTION


def test_msmarco_collection_streams_and_strips_crlf(tmp_path):
  path = _write(tmp_path / "collection.tsv", "5\tfirst\r\n6\tsecond\r\nbroken line\r\n")
  docs = msmarco.iter_collection(path)
  assert next(docs) == Document("5", "first")  # Yielded before the bad line 3 is read.
  assert next(docs) == Document("6", "second")
  with pytest.raises(DataError, match=f"^{path}:3: expected 2 tab-separated columns"):
    next(docs)


def test_msmarco_queries_qrels_and_triples(tmp_path):
  queries = _write(tmp_path / "queries.dev.small.tsv", "1048585\twhat is paula deen's brother\n2\t)what was the"
                   " immediate impact\n")
  assert msmarco.read_queries(queries) == {"1048585": "what is paula deen's brother",
                                                   "2": ")what was the immediate impact"}
  tabs = _write(tmp_path / "qrels.dev.small.tsv", "300674\t0\t7067032\t1\n125705\t0\t7067056\t1\n300674\t0\t9\t2\n")
  spaces = _write(tmp_path / "qrels.train.tsv.gz", "300674 0 7067032 1\n125705  Q0 7067056 1\n300674 0 9 2\n")
  expected = {"300674": {"7067032": 1, "9": 2}, "125705": {"7067056": 1}}
  assert msmarco.read_qrels(tabs) == expected
  assert msmarco.read_qrels(spaces) == expected
  triples = _write(tmp_path / "triples.train.small.tsv.gz", 'is "x" a y?\tyes, "x" is\tno\nq2\tp2\tn2\n')
  assert list(msmarco.iter_triples(triples)) == [('is "x" a y?', 'yes, "x" is', "no"), ("q2", "p2", "n2")]
  ids = _write(tmp_path / "qidpidtriples.train.full.2.tsv", "400296\t1540783\t3518497\n662731\t193249\t2975302\n")
  assert list(msmarco.iter_id_triples(ids)) == [("400296", "1540783", "3518497"),
                                                       ("662731", "193249", "2975302")]


# ----------------------------------------------------------------------------------- errors
BAD_LINES = [
    # (reader, file name, content, line, what the message says)
    (msmarco.iter_collection, "collection.tsv", "1\ta\n2\tb\tc\n", 2, "expected 2 tab-separated columns (pid, text), found 3"),
    (msmarco.iter_collection, "collection.tsv.gz", "1\ta\n\n \tb\n", 3, "empty pid"),
    (msmarco.read_queries, "queries.tsv", "1\ta\n2 no tab\n", 2, "expected 2 tab-separated columns (qid, text), found 1"),
    (msmarco.read_qrels, "qrels.tsv", "1 0 7 1\n1 0 8 1.5\n", 2, "relevance '1.5' is not an integer"),
    (msmarco.read_qrels, "qrels.tsv", "1 0 7 1\n1 0 8\n", 2, "expected 4 columns (qid, iteration, docid, relevance), found 3"),
    (msmarco.read_qrels, "qrels.tsv", "1\t0\t\t1\n", 1, "empty docid"),
    (msmarco.iter_triples, "triples.tsv", "q\tp\tn\nq\tp\n", 2, "expected 3 tab-separated columns"),
    (msmarco.iter_id_triples, "ids.tsv", "1\t2\t3\n1\t\t3\n", 2, "empty positive pid"),
    (beir.iter_corpus, "corpus.jsonl", '{"_id": "a", "text": "x"}\n{"_id": "b", "text": \n', 2, "invalid JSON"),
    (beir.iter_corpus, "corpus.jsonl.gz", '{"_id": "a", "text": "x"}\n{"_id": "b", "title": "t"}\n', 2, "missing required key 'text'"),
    (beir.iter_corpus, "corpus.jsonl", '{"_id": "", "text": "x"}\n', 1, "empty '_id'"),
    (beir.read_queries, "queries.jsonl", '{"text": "x"}\n', 1, "missing required key '_id'"),
    (beir.read_queries, "queries.jsonl", '{"_id": "1", "text": "x"}\n["_id"]\n', 2, "expected a JSON object, found list"),
    (beir.read_qrels, "test.tsv", "query-id\tcorpus-id\tscore\nq\td\thigh\n", 2, "relevance 'high' is not an integer"),
    (beir.read_qrels, "test.tsv", "q1\td1\t1\n", 1, "expected the header"),
    (beir.read_qrels, "test.tsv", "query-id\tcorpus-id\tscore\nq\td\n", 2, "expected 3 tab-separated columns"),
    (dpr.iter_passages, "psgs_w100.tsv", 'id\ttext\ttitle\n1\t"t"\n', 2, "expected 3 tab-separated columns (id, text, title)"),
]


@pytest.mark.parametrize("reader,name,content,lineno,what", BAD_LINES, ids=[f"{b[1]}-{b[4]}" for b in BAD_LINES])
def test_bad_line_names_file_and_line(tmp_path, reader, name, content, lineno, what):
  path = _write(tmp_path / name, content)
  message = _error(reader, path)
  assert message.startswith(f"{path}:{lineno}: "), message
  assert what in message


def test_invalid_utf8_names_its_line(tmp_path):
  path = tmp_path / "collection.tsv"
  path.write_bytes(b"1\tok\n2\tbad \xff byte\n")
  assert _error(msmarco.iter_collection, path).startswith(f"{path}:2: not valid UTF-8")


def test_truncated_gzip_names_the_file(tmp_path):
  path = tmp_path / "collection.tsv.gz"
  path.write_bytes(gzip.compress("".join(f"{i}\t{'x' * 5000}\n" for i in range(20)).encode())[:-30])
  message = _error(msmarco.iter_collection, path)
  assert message.startswith(f"{path}:") and "cannot read" in message, message


@pytest.mark.parametrize("reader,name,content,what", [
    (msmarco.iter_collection, "collection.tsv", "1\ta\n2\tb\n1\tc\n", "duplicate pid '1' (first on line 1)"),
    (msmarco.read_queries, "queries.tsv", "q\ta\n\nq\tb\n", "duplicate qid 'q' (first on line 1)"),
    (msmarco.read_qrels, "qrels.tsv", "q 0 d 1\nq 0 e 1\nq 0 d 0\n", "duplicate qrels pair ('q', 'd') (first on line 1)"),
    (beir.iter_corpus, "corpus.jsonl", '{"_id": "d", "text": "a"}\n\n{"_id": "d", "text": "b"}\n', "duplicate _id 'd' (first on line 1)"),
    (dpr.iter_passages, "psgs_w100.tsv", "id\ttext\ttitle\n1\ta\tA\n1\tb\tB\n", "duplicate id '1' (first on line 2)"),
])
def test_duplicates_name_both_lines(tmp_path, reader, name, content, what):
  path = _write(tmp_path / name, content)
  assert _error(reader, path) == f"{path}:3: {what}."


def test_warn_skips_counts_and_logs_one_summary(tmp_path, monkeypatch):
  warnings = []
  monkeypatch.setattr(reading.logging, "warning", lambda *args: warnings.append(args))
  path = _write(tmp_path / "collection.tsv", "1\ta\nno tab\n2\tb\n\tempty id\n1\tdup\n3\tc\n")
  report = Report()
  docs = list(msmarco.iter_collection(path, errors="warn", report=report))
  assert docs == [Document("1", "a"), Document("2", "b"), Document("3", "c")]
  assert report.skipped == 3
  assert [m.split(": ")[0] for m in report.messages] == [f"{path}:2", f"{path}:4", f"{path}:5"]
  assert len(warnings) == 1 and warnings[0][1:3] == (str(path), 3)
  assert f"{path}:2: expected 2" in warnings[0][-1]
  # A shared Report accumulates over readers; a clean file logs nothing.
  qrels = _write(tmp_path / "qrels.tsv", "q 0 d x\nq 0 e 2\n")
  assert msmarco.read_qrels(qrels, errors="warn", report=report) == {"q": {"e": 2}}
  assert report.skipped == 4 and len(warnings) == 2
  assert msmarco.read_queries(_write(tmp_path / "q.tsv", "q\tx\n"), errors="warn") == {"q": "x"}
  assert len(warnings) == 2


def test_unknown_errors_policy_is_refused_at_the_call(tmp_path):
  path = _write(tmp_path / "collection.tsv", "1\ta\n")
  with pytest.raises(ValueError, match="errors must be one of"):
    msmarco.iter_collection(path, errors="ignore")


# ----------------------------------------------------------------------------------- check_qrels
def test_check_qrels_unknown_ids(tmp_path):
  qrels = {"q1": {"d1": 1, "d9": 2}, "q7": {"d1": 1}, "q2": {"d2": 0}, "q3": {"d8": 1}}
  docs, queries = {"d1", "d2"}, {"q1", "q2", "q3"}
  with pytest.raises(DataError, match=r"^qrels/test.tsv: qrels name unknown document id 'd9' \(for query 'q1'\)"):
    reading.check_qrels(qrels, docs, queries, "qrels/test.tsv")
  with pytest.raises(DataError, match=r"^qrels/test.tsv: qrels name unknown query id 'q7'"):
    reading.check_qrels(qrels, docs | {"d8", "d9"}, queries, "qrels/test.tsv")
  report = Report()
  kept = reading.check_qrels(qrels, docs, queries, "qrels/test.tsv", errors="warn", report=report)
  assert kept == {"q1": {"d1": 1}, "q2": {"d2": 0}}  # q3 lost its only pair, so it is gone too.
  assert report.skipped == 3
  assert qrels["q1"] == {"d1": 1, "d9": 2}  # The input is left alone.
  assert reading.check_qrels(qrels, None, None, "x") == qrels


# ----------------------------------------------------------------------------------- BEIR
def test_beir_round_trip_with_write_beir(tmp_path):
  corpus = [Document("d1", "Zürich liegt am See.", "Zürich"), Document("d2", 'a "quoted"\ttab', ""),
            Document("文書3", "日本語のテキスト", "タイトル")]
  queries = {"q1": "wo liegt Zürich?", "q2": "日本語"}
  qrels = {"test": {"q1": {"d1": 2, "d2": 0}, "q2": {"文書3": 1}}, "train": {"q2": {"d2": 1}}}
  out = beir.write(tmp_path / "ds", corpus, queries, qrels)
  got_corpus, got_queries, got_qrels = beir.read_dataset(out, "test")
  assert got_corpus == {d.doc_id: d for d in corpus}
  assert list(got_corpus) == ["d1", "d2", "文書3"]
  assert got_queries == queries
  assert got_qrels == qrels["test"]
  assert beir.read_dataset(out, "train")[2] == {"q2": {"d2": 1}}
  # Gzipped files are found and read the same.
  for name in ("corpus.jsonl", "queries.jsonl"):
    _write(out / f"{name}.gz", (out / name).read_text(encoding="utf-8"))
    (out / name).unlink()
  assert beir.read_dataset(out, "test") == (got_corpus, queries, qrels["test"])


def test_beir_upstream_lines_and_dataset_checks(tmp_path):
  # Upstream files carry "metadata", may omit or null the title, and some use integer ids.
  corpus = _write(tmp_path / "corpus.jsonl", '{"_id": "4983", "title": "Microstructural development", "text": '
                  '"Alterations of the architecture", "metadata": {}}\n{"_id": 7, "title": null, "text": "t"}\n')
  assert list(beir.iter_corpus(corpus)) == [
      Document("4983", "Alterations of the architecture", "Microstructural development"), Document("7", "t", "")]
  (tmp_path / "queries.jsonl").write_text('{"_id": "1", "text": "q", "metadata": {}}\n')
  (tmp_path / "qrels").mkdir()
  _write(tmp_path / "qrels" / "test.tsv", "query-id\tcorpus-id\tscore\n1\t4983\t1\n1\t999\t1\n")
  message = _error(beir.read_dataset, tmp_path, "test")
  assert message == f"{tmp_path / 'qrels' / 'test.tsv'}:3: qrels name unknown document id '999' (for query '1')."
  assert beir.read_dataset(tmp_path, "test", errors="warn")[2] == {"1": {"4983": 1}}
  assert _error(beir.read_dataset, tmp_path, "dev").startswith(f"{tmp_path / 'qrels' / 'dev.tsv'}: no such file")


def test_qrels_ids_missing_from_the_corpus_name_the_line(tmp_path):
  qrels = _write(tmp_path / "qrels.dev.tsv", "1 0 10 1\n2 0 11 1\n\n3 0 77 1\n")
  message = _error(msmarco.read_qrels, qrels, doc_ids={"10", "11"}, query_ids={"1", "2", "3"})
  assert message == f"{qrels}:4: qrels name unknown document id '77' (for query '3')."
  assert _error(msmarco.read_qrels, qrels, doc_ids=None, query_ids={"1", "3"}) == (
      f"{qrels}:2: qrels name unknown query id '2' (with document '11').")
  report = Report()
  kept = msmarco.read_qrels(qrels, errors="warn", report=report, doc_ids={"10", "11"}, query_ids=None)
  assert kept == {"1": {"10": 1}, "2": {"11": 1}} and report.skipped == 1
  assert report.messages == [f"{qrels}:4: qrels name unknown document id '77' (for query '3')."]


# ----------------------------------------------------------------------------------- DPR / NQ
DPR_EXAMPLES = [
    {"dataset": "nq_dev_psgs_w100", "question": "who sings does he love me with reba", "answers": ["Linda Davis"],
     "positive_ctxs": [{"title": "Does He Love You", "text": 'Does He Love You "Does He Love You" is a song',
                        "score": 1000, "title_score": 1, "passage_id": "11828866"}],
     "negative_ctxs": [{"title": "Cormac McCarthy", "text": "chores of the house", "score": 0, "title_score": 0,
                        "passage_id": "2145653"}],
     "hard_negative_ctxs": [{"title": "Why Don't You Love Me", "text": "song by Beyoncé", "score": 14.8,
                             "title_score": 0, "passage_id": "14525568"}]},
    {"question": "how many pages is invisible man", "answers": ["581 ( second edition )", "581"],
     "positive_ctxs": [{"title": "Invisible Man", "text": "a novel", "psg_id": 3207432}],
     "negative_ctxs": []},
]


@pytest.mark.parametrize("name", ["nq-dev.json", "nq-dev.json.gz"])
def test_dpr_examples(tmp_path, name):
  path = _write(tmp_path / name, json.dumps(DPR_EXAMPLES, indent=4, ensure_ascii=False))
  first, second = dpr.iter_examples(path)
  assert first == dpr.Example(
      question="who sings does he love me with reba", answers=("Linda Davis",),
      positives=(Document("11828866", 'Does He Love You "Does He Love You" is a song', "Does He Love You"),),
      negatives=(Document("2145653", "chores of the house", "Cormac McCarthy"),),
      hard_negatives=(Document("14525568", "song by Beyoncé", "Why Don't You Love Me"),))
  assert second == dpr.Example("how many pages is invisible man", ("581 ( second edition )", "581"),
                                      (Document("3207432", "a novel", "Invisible Man"),), (), ())


def test_dpr_example_errors_name_the_example_line(tmp_path):
  bad = [DPR_EXAMPLES[1], {**DPR_EXAMPLES[1], "positive_ctxs": [{"title": "t", "text": "x"}]}]
  path = _write(tmp_path / "nq-train.json", json.dumps(bad, indent=2))
  start = json.dumps(bad, indent=2).split("\n").index("  {", 2) + 1  # Line where the 2nd example opens.
  assert _error(dpr.iter_examples, path) == (
      f"{path}:{start}: positive_ctxs[0]: missing required key 'passage_id' (or 'psg_id').")
  report = Report()
  assert len(list(dpr.iter_examples(path, errors="warn", report=report))) == 1 and report.skipped == 1
  path = _write(tmp_path / "broken.json", '[\n  {"question": "q",\n   "answers": ["a"],\n   "positive_ctxs": [}\n]')
  assert _error(dpr.iter_examples, path).startswith(f"{path}:4: invalid JSON")
  path = _write(tmp_path / "no-question.json", '[{"answers": [], "positive_ctxs": []}]')
  assert _error(dpr.iter_examples, path) == f"{path}:1: missing required key 'question'."
  path = tmp_path / "latin1.json"
  path.write_bytes('[\n  {"question": "caf\u00e9"}\n]'.encode("latin-1"))
  assert _error(dpr.iter_examples, path).startswith(f"{path}:2: not valid UTF-8")
  path = _write(tmp_path / "dict.json", '\n{"data": []}')
  assert _error(dpr.iter_examples, path).startswith(f"{path}:2: expected a JSON list")


@pytest.mark.parametrize("text", ["[]", "[ ]\n", "\n[\n]\n\n"])
def test_empty_dpr_file_has_no_examples(tmp_path, text):
  assert list(dpr.iter_examples(_write(tmp_path / "nq-dev.json", text))) == []
  path = _write(tmp_path / "extra.json", text + "[]")
  assert "extra data after the list" in _error(dpr.iter_examples, path)


@pytest.mark.parametrize("reader,name,content,lineno,what", [
    (msmarco.iter_collection, "collection.tsv", "0\tok\n\t\n", 2, "empty pid"),
    (msmarco.iter_triples, "triples.train.small.tsv", "q\tp\tn\n\n\t\t\n", 3, "empty query"),
    (msmarco.read_queries, "queries.dev.tsv", "\t\n1\tq\n", 1, "empty qid"),
    (msmarco.iter_id_triples, "qidpidtriples.tsv", "1\t2\t3\n \t \t \n", 2, "empty qid"),
    (msmarco.read_qrels, "qrels.dev.tsv", "1 0 2 1\n\t\t\t\n", 2, "empty qid"),
])
def test_a_line_of_bare_separators_is_a_bad_record_not_a_blank_line(tmp_path, reader, name, content, lineno, what):
  path = _write(tmp_path / name, content)
  assert _error(reader, path).startswith(f"{path}:{lineno}: {what}")
  report = Report()
  result = reader(path, errors="warn", report=report)
  list(result) if isinstance(result, Iterator) else result
  assert report.skipped == 1  # Counted, not silently dropped.


def test_whitespace_only_lines_are_blank(tmp_path):
  path = _write(tmp_path / "collection.tsv", "0\tok\n   \n\n1\tfine\n")
  assert [d.doc_id for d in msmarco.iter_collection(path)] == ["0", "1"]
  corpus = _write(tmp_path / "corpus.jsonl", '{"_id": "a", "text": "x"}\n\t\n')
  assert [d.doc_id for d in beir.iter_corpus(corpus)] == ["a"]  # JSON lines: a tab is whitespace.


@pytest.mark.parametrize("name", ["psgs_w100.tsv", "psgs_w100.tsv.gz"])
def test_dpr_passages_unquote_csv_fields(tmp_path, name):
  # The first line of the real file, shortened: the text field is csv-quoted with doubled quotes.
  path = _write(tmp_path / name, 'id\ttext\ttitle\n1\t"Aaron Aaron ( or ; ""Ahärôn"") is a prophet"\tAaron\n'
                '2\tplain text\t"""Weird Al"" Yankovic"\n')
  assert list(dpr.iter_passages(path)) == [Document("1", 'Aaron Aaron ( or ; "Ahärôn") is a prophet', "Aaron"),
                                                    Document("2", "plain text", '"Weird Al" Yankovic')]


def test_write_beir_rejects_ids_that_would_corrupt_the_tsv(tmp_path):
  with pytest.raises(DataError, match=r"document id 'a\\tb'"):
    beir.write(tmp_path / "x", [Document("a\tb", "text")], {"q": "t"}, {"test": {"q": {"a\tb": 1}}})
  with pytest.raises(DataError, match="query id ''"):
    beir.write(tmp_path / "y", [Document("d", "text")], {"": "t"}, {"test": {}})
  assert not (tmp_path / "x").exists()


def test_atomic_file_replaces_whole_or_not_at_all(tmp_path):
  import os

  import numpy as np
  path = tmp_path / "sub" / "table.npz"
  with cache.atomic_file(path) as tmp:
    assert tmp.parent == path.parent and tmp.name == f"table.{os.getpid()}.tmp.npz"  # Per process, same suffix.
    np.savez(tmp, x=np.arange(3))
  with np.load(path) as z:
    np.testing.assert_array_equal(z["x"], [0, 1, 2])
  with pytest.raises(RuntimeError, match="disk full"):
    with cache.atomic_file(path) as tmp:
      np.savez(tmp, x=np.arange(5))
      raise RuntimeError("disk full")
  with np.load(path) as z:  # The earlier file is intact; no temporary file is left behind.
    np.testing.assert_array_equal(z["x"], [0, 1, 2])
  assert sorted(p.name for p in path.parent.iterdir()) == ["table.npz"]
