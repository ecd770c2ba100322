"""Dense and BM25 evaluation, the results table, and --mode eval / eval-during-training end to end."""
import json

import numpy as np
import pytest

from edistill.data.types import RetrievalSet
from edistill.eval import evaluator, metrics, report, suite
from edistill import recipes
from tests.test_train import _config

DATA = RetrievalSet(doc_ids=["a", "b", "c"], doc_texts=["red apple fruit", "blue ocean water", "green forest trees"],
                    query_ids=["q1", "q2"], query_texts=["apple", "ocean"], qrels={"q1": {"a": 1}, "q2": {"c": 1}},
                    hard_negatives={})


def test_dense_scores_rank_by_inner_product():
  docs = np.eye(3, dtype=np.float32)
  queries = np.array([[0.9, 0.1, 0.0], [0.0, 0.8, 0.6]], np.float32)  # q2 ranks b (0.8) above c (0.6).
  out = evaluator.dense_scores(queries, docs, DATA, k=3)
  assert out["mrr@10"] == pytest.approx((1.0 + 0.5) / 2)
  assert out["recall@10"] == pytest.approx(1.0)
  assert out["ndcg@10"] == pytest.approx((1.0 + 1 / np.log2(3)) / 2)


def test_a_nan_embedding_is_caught_before_the_metrics_naming_its_id():
  docs = np.eye(3, dtype=np.float32)
  queries = np.array([[0.9, 0.1, 0.0], [0.0, np.nan, 0.6]], np.float32)
  with pytest.raises(FloatingPointError, match="1 of 2 query embeddings are non-finite, the first for query id 'q2'"):
    evaluator.dense_scores(queries, docs, DATA, k=3)
  docs[2, 0] = np.inf
  with pytest.raises(FloatingPointError, match="document id 'c' \\(row 2\\)"):
    evaluator.dense_scores(np.eye(3, dtype=np.float32)[:2], docs, DATA, k=3)


def test_dense_scores_with_scann_reports_recall_against_exact():
  rng = np.random.default_rng(0)
  docs = rng.normal(size=(3, 8)).astype(np.float32)
  out = evaluator.dense_scores(docs[[0, 2]] + 0.01, docs, DATA, k=3, scann=True)
  assert out["scann/recall@10_vs_exact"] == pytest.approx(1.0)
  assert out["scann/mrr@10"] == pytest.approx(out["mrr@10"]) == pytest.approx(1.0)


def test_bm25_finds_the_lexical_match():
  out = evaluator.bm25(DATA, k=3)
  assert out["mrr@10"] == pytest.approx(0.5)  # q1 -> a at rank 1; q2 ("ocean") matches b only, c not retrieved.
  assert out["recall@10"] == pytest.approx(0.5)


def test_results_table_has_teacher_share_and_blank_cells():
  rows = {"teacher": {"mrr@10": 0.4, "recall@10": 0.5, "recall@100": 0.9, "ndcg@10": 0.45, "params_m": 109.5},
          "student": {"mrr@10": 0.39, "recall@10": 0.5, "recall@100": 0.8, "ndcg@10": 0.4, "query_ms": 1.5}}
  table = report.results_table(rows)
  assert "| student | 0.3900 | 0.5000 | 0.8000 | 0.4000 | 97.5 |  | 1.500 |" in table
  assert "| teacher | 0.4000 |" in table and "109.5M" in table
  assert "interval" not in table


def test_teacher_intervals_bootstrap_the_share_of_the_teacher():
  per_query = {"teacher": {"q1": 1.0, "q2": 1.0}, "student": {"q1": 1.0, "q2": 0.0}, "bm25": {"q1": 0.5, "q2": 0.5}}
  rows = {name: {"mrr@10": sum(v.values()) / 2, report.PER_QUERY: v} for name, v in per_query.items()}
  out, split_off = report.teacher_intervals(rows)
  assert split_off == per_query and all(report.PER_QUERY not in r for r in out.values())
  # Resamples of 2 queries give the student 0, 1/2 or 1 of the teacher (p = 1/4, 1/2, 1/4): 2.5th/97.5th
  # percentiles 0 and 100 %; BM25 is half the teacher on every query.
  assert (out["student"]["teacher_pct_lo"], out["student"]["teacher_pct_hi"]) == (0.0, 100.0)
  assert (out["bm25"]["teacher_pct_lo"], out["bm25"]["teacher_pct_hi"]) == (50.0, 50.0)
  assert "teacher_pct_lo" not in out["teacher"]
  table = report.results_table(out)
  assert "| % teacher MRR@10 | 95 % interval |" in table
  assert "| student | 0.5000 |  |  |  | 50.0 | 0.0-100.0 |" in table and "| 50.0 | 50.0-50.0 |" in table


def test_eval_mode_and_eval_during_training(tmp_path, tiny_models, isolated_cache):
  cfg = _config(tiny_models, steps=2)
  cfg.eval.every_steps = 2
  metrics = recipes.train(cfg, tmp_path)
  logged = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert any("eval/mrr@10" in m for m in logged)
  ds = report.data_name(cfg.data)
  assert (tmp_path / f"results_{ds}_dev.md").is_file()
  rows = suite.run(cfg, tmp_path, split="test")
  assert set(rows) == {"teacher", "student_zero_shot", "student", "bm25"}
  for name, r in rows.items():
    assert 0.0 <= r["mrr@10"] <= 1.0 and r["num_queries"] > 0, name
  results = json.loads((tmp_path / f"results_{ds}_test.json").read_text())
  assert report.result_file(tmp_path, "test") == tmp_path / f"results_{ds}_test.json"  # Via config.json.
  assert results["bm25"]["mrr@10"] == pytest.approx(rows["bm25"]["mrr@10"])
  text = (tmp_path / f"results_{ds}_test.md").read_text()
  assert "| teacher |" in text and text.startswith(f"# {ds} test: ")
  assert f"Lengths: queries {cfg.data.max_query_length} tokens, documents {cfg.data.max_doc_length}; " in text
  per_query = json.loads((tmp_path / f"per_query_{ds}_test.json").read_text())
  assert set(per_query) == set(rows)
  for name, values in per_query.items():  # The per-query values the table's means average.
    assert len(values) == rows[name]["num_queries"]
    assert np.mean(list(values.values())) == pytest.approx(rows[name]["mrr@10"]), name
  if rows["teacher"]["mrr@10"] > 0:
    share = 100 * rows["bm25"]["mrr@10"] / rows["teacher"]["mrr@10"]
    assert rows["bm25"]["teacher_pct_lo"] <= share <= rows["bm25"]["teacher_pct_hi"]
  assert np.isfinite(metrics["loss"])


def test_unknown_eval_model_is_named(tmp_path, tiny_models, isolated_cache):
  cfg = _config(tiny_models)
  cfg.eval.models = ["teacher", "oracle"]
  with pytest.raises(ValueError, match=r"unknown entries \['oracle'\]"):
    suite.run(cfg, tmp_path)


def test_parse_domain_gives_the_full_pools_of_an_offline_benchmark():
  assert suite.parse_domain("debian:10000") == ("debian-10000", {"source": "debian", "path": "", "corpus_size": 10000,
                                                                 "n_test": 1000, "n_dev": 500})
  assert suite.parse_domain("stdlib") == ("stdlib", {"source": "stdlib", "path": "", "corpus_size": 0,
                                                     "n_test": 500, "n_dev": 250})
  assert suite.parse_domain("beir:/data/scifact")[0] == "beir-scifact"
  for bad in ("imagenet", "debian:lots", "beir"):
    with pytest.raises(ValueError, match="config.eval.domains entry"):
      suite.parse_domain(bad)


def test_cross_domain_evaluates_every_model_on_each_domain_in_one_table(tmp_path, tiny_models, isolated_cache):
  cfg = _config(tiny_models, steps=1)
  recipes.train(cfg, tmp_path)
  in_domain = suite.run(cfg, tmp_path, split="test", models=("bm25",))
  cfg.eval.domains = ("stdlib:1000",)
  cfg.eval.scann = False
  out = suite.run_domains(cfg, tmp_path)
  assert list(out) == ["stdlib-1000"]
  rows = out["stdlib-1000"]
  assert set(rows) == {"teacher", "student_zero_shot", "student", "bm25"}
  assert (tmp_path / "results_stdlib-1000_test.md").is_file()
  assert rows["bm25"]["num_queries"] == 500 > in_domain["bm25"]["num_queries"]  # The full test pool.
  table = (tmp_path / "results_cross_domain.md").read_text()
  assert table.count("| stdlib-1000 |") == 4
  share = 100 * rows["student"]["mrr@10"] / rows["teacher"]["mrr@10"]
  assert f"| stdlib-1000 | 500 | student | {rows['student']['mrr@10']:.4f} |" in table
  assert f"| {share:.1f} | {rows['student']['teacher_pct_lo']:.1f}-" in table
  # The in-domain results are not overwritten.
  assert (tmp_path / f"results_{report.data_name(cfg.data)}_test.json").is_file()


def test_trec_run_files_hold_each_models_ranking(tmp_path):
  rng = np.random.default_rng(0)
  docs = rng.normal(size=(3, 8)).astype(np.float32)
  rows = {"student": evaluator.dense_scores(docs[[2, 0]] + 0.3 * rng.normal(size=(2, 8)), docs, DATA, k=3),
          "bm25": evaluator.bm25(DATA, k=3)}
  rows, runs = report.split_runs(rows)
  assert set(runs) == {"student", "bm25"} and all(report.RUN not in r for r in rows.values())
  rows, per_query = report.teacher_intervals(rows)
  report.write_results(tmp_path, "test", rows, "", per_query, runs=runs)
  for model in runs:
    lines = (tmp_path / f"run_test_{model}.trec").read_text().splitlines()
    read = {}
    for line in lines:
      qid, q0, doc, rank, score, tag = line.split()
      assert q0 == "Q0" and tag == f"edistill-{model}"
      read.setdefault(qid, []).append((int(rank), doc, float(score)))
    for qid, ranked in read.items():
      assert [r for r, _, _ in ranked] == list(range(1, len(ranked) + 1))
      assert [s for _, _, s in ranked] == sorted((s for _, _, s in ranked), reverse=True)
    back = {q: {d: s for _, d, s in ranked} for q, ranked in read.items()}
    assert metrics.evaluate(back, DATA.qrels, ("mrr@10",))["mrr@10"] == pytest.approx(rows[model]["mrr@10"])
  assert report.trec_run({"q": {"b": 0.5, "a": 2.0}}, "t") == "q Q0 a 1 2.000000 t\nq Q0 b 2 0.500000 t\n"


def test_results_files_are_named_by_dataset(tmp_path):
  assert report.dataset_name("wordnet_gcide", "", 10000) == "wordnet_gcide-10000"
  assert report.dataset_name("debian") == "debian"
  assert report.dataset_name("wordnet_gcide", "data/stdlib", 2000) == "wordnet_gcide-2000"  # Built here: no path.
  assert report.dataset_name("beir", "/data/scifact/") == "beir-scifact"
  assert report.dataset_name("msmarco", "runs/../msmarco-v1") == "msmarco-msmarco-v1"
  with pytest.raises(FileNotFoundError, match="no config.json"):
    report.result_file(tmp_path, "test")
  (tmp_path / "results_test.json").write_text("{}")  # Written before files named the dataset.
  assert report.result_file(tmp_path, "test") == tmp_path / "results_test.json"
  (tmp_path / "config.json").write_text(json.dumps({"data": {"source": "beir", "path": "/x/nfcorpus", "corpus_size": 0}}))
  assert report.result_file(tmp_path, "test") == tmp_path / "results_test.json"  # The named one is absent.
  (tmp_path / "results_beir-nfcorpus_test.json").write_text("{}")
  assert report.result_file(tmp_path, "test") == tmp_path / "results_beir-nfcorpus_test.json"
  assert report.result_file(tmp_path, "dev", "per_query") == tmp_path / "per_query_beir-nfcorpus_dev.json"


def test_truncated_counts_documents_over_the_length_on_a_seeded_sample():
  class Words:  # One token per word, plus [CLS] and [SEP].
    def __call__(self, texts, add_special_tokens, truncation, verbose):
      assert add_special_tokens and not truncation
      return {"input_ids": [[0] * (len(t.split()) + 2) for t in texts]}

  texts = ["a b c", "a", "a b c d e f", "a b"]  # 5, 3, 8, 4 tokens.
  assert suite.truncated(Words(), texts, 4) == (2, 4)
  assert suite.truncated(Words(), texts, 8) == (0, 4)
  assert suite.truncated(Words(), [], 8) == (0, 0)
  many = ["a b c d"] * 30 + ["a"] * 70  # 30 % are 6 tokens.
  n, of = suite.truncated(Words(), many, 5, sample=50, seed=1)
  assert of == 50 and n == sum(len(many[i].split()) + 2 > 5 for i in np.random.default_rng(1).permutation(100)[:50])


def test_the_cut_document_count_is_kept_by_content_and_recounted_when_anything_changes(tmp_path, monkeypatch):
  from tokenizers import Tokenizer, models, pre_tokenizers
  from transformers import PreTrainedTokenizerFast
  backend = Tokenizer(models.WordLevel({"a": 0, "b": 1, "[UNK]": 2}, unk_token="[UNK]"))
  backend.pre_tokenizer = pre_tokenizers.Whitespace()
  tok = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]")
  texts = ["a b a", "a", "b b b b b"]  # 3, 1, 5 tokens.
  assert suite.truncated_cached(tmp_path, tok, texts, 2) == (2, 3)
  assert len(list(tmp_path.glob("truncated_*.json"))) == 1
  recounted = []
  monkeypatch.setattr(suite, "truncated", lambda *a: recounted.append(a[1:]) or (9, 9))
  assert suite.truncated_cached(tmp_path, tok, texts, 2) == (2, 3) and not recounted  # Kept.
  assert suite.truncated_cached(tmp_path, tok, texts[:2], 2) == (9, 9)  # Other texts,
  assert suite.truncated_cached(tmp_path, tok, texts, 3) == (9, 9)  # another length,
  tok.add_tokens(["c"])
  assert suite.truncated_cached(tmp_path, tok, texts, 2) == (9, 9)  # another tokenizer: counted again.
  assert suite.truncated_cached(None, tok, texts, 2) == (9, 9) and len(recounted) == 4  # No cache: every call.
