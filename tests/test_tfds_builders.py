"""TFDS builders: prepared once from raw files, then read without them."""
import gzip
import json
import shutil

import pytest

from edistill.data import tfds_builders
from edistill.data.formats import beir
from edistill.data.types import DataError, Document


def _beir(tmp_path):
  docs = [Document("d1", "Rivers flow.", "River"), Document("d2", "Dogs bark."), Document("d3", "Café ☕")]
  return beir.write(tmp_path / "raw", docs, {"q1": "what flows", "q2": "who barks", "q3": "coffee"},
                            {"train": {"q1": {"d1": 1}, "q2": {"d2": 2, "d3": 0}}, "test": {"q3": {"d3": 1}}})


def test_beir_round_trip_and_reading_needs_no_raw_files(tmp_path, capfd):
  raw = _beir(tmp_path)
  b = tfds_builders.builder("beir", raw, tmp_path / "tfds")
  out = capfd.readouterr()
  assert "Downloading and preparing" not in out.out + out.err  # Nothing is downloaded: TFDS's banner is not true.
  shutil.rmtree(raw)
  b = tfds_builders.builder("beir", raw, tmp_path / "tfds")  # Prepared: the raw files are not needed.
  train = tfds_builders.load(b, "train")
  assert sorted(zip(train.doc_ids, train.doc_texts)) == [("d1", "River Rivers flow."), ("d2", "Dogs bark."),
                                                         ("d3", "Café ☕")]
  assert sorted(train.query_ids) == ["q1", "q2"] and train.qrels == {"q1": {"d1": 1}, "q2": {"d2": 2, "d3": 0}}
  assert dict(zip(train.query_ids, train.query_texts))["q2"] == "who barks"
  test = tfds_builders.load(b, "test")
  assert test.query_ids == ["q3"] and test.qrels == {"q3": {"d3": 1}}
  with pytest.raises(KeyError, match=r"available: \['test', 'train'\]"):
    tfds_builders.load(b, "dev")


def test_msmarco_files(tmp_path):
  raw = tmp_path / "raw"
  raw.mkdir()
  (raw / "collection.tsv").write_text("0\tThe first passage.\n1\tA \"quoted\" passage.\n2\tThird.\n")
  with gzip.open(raw / "queries.train.tsv.gz", "wt") as f:
    f.write("100\tfirst?\n101\tquoted?\n")
  (raw / "qrels.train.tsv").write_text("100\t0\t0\t1\n101\t0\t1\t1\n")
  (raw / "queries.dev.small.tsv").write_text("200\tthird?\n")
  (raw / "qrels.dev.small.tsv").write_text("200 0 2 1\n")
  b = tfds_builders.builder("msmarco", raw, tmp_path / "tfds")
  train = tfds_builders.load(b, "train")
  assert train.qrels == {"100": {"0": 1}, "101": {"1": 1}}
  assert dict(zip(train.doc_ids, train.doc_texts))["1"] == 'A "quoted" passage.'
  assert tfds_builders.load(b, "dev").qrels == {"200": {"2": 1}}


def test_dpr_nq_keeps_hard_negatives(tmp_path):
  raw = tmp_path / "raw"
  raw.mkdir()
  (raw / "psgs_w100.tsv").write_text("id\ttext\ttitle\n1\tAaron was a prophet.\tAaron\n2\tMoses led.\tMoses\n"
                                     "3\tPharaoh ruled.\tPharaoh\n")
  ex = [{"question": "who was aaron", "answers": ["a prophet"],
         "positive_ctxs": [{"title": "Aaron", "text": "Aaron was a prophet.", "passage_id": "1"}],
         "negative_ctxs": [], "hard_negative_ctxs": [{"title": "Moses", "text": "Moses led.", "passage_id": "2"}]}]
  (raw / "biencoder-nq-train.json").write_text(json.dumps(ex))
  train = tfds_builders.load(tfds_builders.builder("dpr_nq", raw, tmp_path / "tfds"), "train")
  assert train.qrels == {"train-0": {"1": 1}} and train.hard_negatives == {"train-0": ["2"]}
  assert dict(zip(train.doc_ids, train.doc_texts))["1"] == "Aaron Aaron was a prophet."


def test_qrels_naming_a_missing_document_fail_at_prepare_time(tmp_path):
  raw = _beir(tmp_path)
  with open(raw / "qrels" / "test.tsv", "a") as f:
    f.write("q3\tnope\t1\n")
  with pytest.raises(DataError, match="nope"):
    tfds_builders.builder("beir", raw, tmp_path / "tfds")
  b = tfds_builders.builder("beir", raw, tmp_path / "tfds2", errors="warn")  # Dropped and counted instead.
  assert tfds_builders.load(b, "test").qrels == {"q3": {"d3": 1}}


def test_empty_manual_dir_explains_what_to_place(tmp_path):
  (tmp_path / "raw").mkdir()
  with pytest.raises(DataError, match="missing or empty.\nPlace the dataset files"):
    tfds_builders.builder("msmarco", tmp_path / "raw", tmp_path / "tfds")
  (tmp_path / "raw" / "queries.train.tsv").write_text("1\tq\n")
  with pytest.raises(DataError, match="no collection.tsv"):
    tfds_builders.builder("msmarco", tmp_path / "raw", tmp_path / "tfds")
  with pytest.raises(ValueError, match="unknown dataset kind"):
    tfds_builders.builder("squad", tmp_path / "raw", tmp_path / "tfds")


def test_stdlib_benchmark_flows_from_builder_through_tfds_into_batches(tmp_path):
  from edistill.data import benchmarks, pipeline
  from edistill.models import tokenization
  from tests.conftest import write_wordpiece_vocab
  raw = benchmarks.build("stdlib", tmp_path / "stdlib", corpus_size=800, train_share=0.5)
  b = tfds_builders.builder("beir", raw, tmp_path / "tfds")
  test, train = tfds_builders.load(b, "test"), tfds_builders.load(b, "train")
  assert len(test.doc_ids) == 800 and set(test.doc_ids) == set(train.doc_ids)
  assert all(d in set(test.doc_ids) for ds in test.qrels.values() for d in ds)
  assert not set(test.query_ids) & set(train.query_ids)
  tok = tokenization.load_tokenizer(write_wordpiece_vocab(tmp_path))
  p = pipeline.from_retrieval_set(train, tok, tok, 16, 32, global_batch_size=8)
  assert p.batch(0)["doc_input_ids"].shape == (8, 1, 32)


def test_unlabeled_pool_is_checked_before_anything_is_built(tmp_path):
  with pytest.raises(ValueError, match="unlabeled_pool='everything'"):
    tfds_builders.unlabeled_queries("wordnet_gcide", corpus_size=2000, pool="everything", cache=tmp_path)
  with pytest.raises(ValueError, match="unlabeled_pool='wordnet_all' needs data.source='wordnet_gcide'"):
    tfds_builders.unlabeled_queries("stdlib", corpus_size=300, pool="wordnet_all", cache=tmp_path)
  assert not list(tmp_path.iterdir())


def test_split_sizes_are_configurable_and_keyed_into_the_prepared_copy(tmp_path):
  from edistill import config_lib
  cfg = config_lib.base_config()
  cfg.data.update(source="stdlib", corpus_size=1200, n_test=300, n_dev=150)
  b = tfds_builders.prepare_config(cfg.data, 0, cache=tmp_path)
  test, dev, train = (tfds_builders.load(b, s) for s in ("test", "dev", "train"))
  assert (len(test.query_ids), len(dev.query_ids)) == (300, 150)  # stdlib: one positive per query, all kept.
  assert all(d in set(test.doc_ids) for s in (test, dev) for ds in s.qrels.values() for d in ds)
  default = tfds_builders.load(tfds_builders.prepare("stdlib", corpus_size=1200, cache=tmp_path), "test")
  assert len(default.query_ids) == 1200 // 20  # The default sizes keep their own copy (and old caches' names).
  assert sorted(p.name for p in (tmp_path / "datasets").iterdir()) == [
      "stdlib-1200-seed0", "stdlib-1200-seed0-test300-dev150"]
  cfg.data.update(source="beir", path=str(tmp_path))
  with pytest.raises(ValueError, match="config.data.n_test / n_dev split an offline benchmark"):
    config_lib.validate(cfg)


def test_a_users_directory_edited_in_place_is_prepared_again(tmp_path):
  raw = _beir(tmp_path)
  first = tfds_builders.load(tfds_builders.prepare("beir", str(raw), cache=tmp_path / "cache"), "train")
  assert dict(zip(first.doc_ids, first.doc_texts))["d2"] == "Dogs bark."
  again = tfds_builders.prepare("beir", str(raw), cache=tmp_path / "cache")  # Unchanged: the same copy.
  assert again.data_dir == tfds_builders.prepare("beir", str(raw), cache=tmp_path / "cache").data_dir
  corpus = raw / "corpus.jsonl"
  corpus.write_text(corpus.read_text().replace("Dogs bark.", "Dogs bark loudly."))
  edited = tfds_builders.load(tfds_builders.prepare("beir", str(raw), cache=tmp_path / "cache"), "train")
  assert dict(zip(edited.doc_ids, edited.doc_texts))["d2"] == "Dogs bark loudly."
  key = tfds_builders.files_key(raw)
  assert tfds_builders.files_key(raw, errors="warn") != key  # A copy that dropped bad lines is another copy.
  (raw / "extra.txt").write_text("x")
  assert tfds_builders.files_key(raw) != key
