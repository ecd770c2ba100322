"""Model-free query generation, caching, mixing, and the seq2seq interface."""
import numpy as np
import pytest

from edistill import cache
from edistill.data import querygen

QUERIES = {"q1": "a large natural stream of flowing water", "q2": "an animal kept as a household pet",
           "q3": "the capital city of a country"}
QRELS = {"q1": {"river": 1}, "q2": {"dog": 1, "cat": 2}, "q3": {"paris": 0}}
CORPUS = {"river": "A large stream of water. It flows in a channel to the sea. Short.",
          "dog": "A domesticated carnivore. It is kept as a companion by many people.",
          "cat": "A small furry feline animal that people keep at home.", "paris": "The capital of France."}


def test_perturb_makes_exactly_one_span_edit():
  rng = np.random.default_rng(0)
  words = "one two three four five six".split()
  seen = set()
  for _ in range(60):
    out = querygen.perturb(" ".join(words), rng, max_span=2).split()
    if "[MASK]" in out:
      seen.add("mask")
      assert len(out) >= len(words) - 1 and out.count("[MASK]") == 1
    elif len(out) < len(words):
      seen.add("delete")
      assert len(out) >= len(words) - 2 and all(w in words for w in out)
    else:
      seen.add("shuffle")
      assert sorted(out) == sorted(words)
  assert seen == {"mask", "delete", "shuffle"}
  assert querygen.perturb("two words", rng) == "two words"  # Too short to edit.


def test_ict_query_is_a_long_enough_sentence_of_the_document():
  rng = np.random.default_rng(1)
  for _ in range(10):
    s = querygen.ict_query(CORPUS["river"], rng)
    assert s in {"A large stream of water.", "It flows in a channel to the sea."}
  assert querygen.ict_query("Too short.", rng) is None


def test_model_free_generation_is_deterministic_and_attached_to_relevant_documents():
  a = querygen.generate_model_free(QUERIES, QRELS, CORPUS, num=12, seed=4)
  b = querygen.generate_model_free(QUERIES, QRELS, CORPUS, num=12, seed=4)
  assert a == b and len(a) == 12
  assert len({g.text for g in a}) == 12 and not {g.text for g in a} & set(QUERIES.values())
  for g in a:
    assert g.doc_id in {"river", "dog", "cat"}  # "paris" has relevance 0: not a positive.
    if g.source.startswith("perturb:"):
      assert g.doc_id in QRELS[g.source.split(":")[1]]
    else:
      assert g.text in CORPUS[g.doc_id]


def test_cache_reuses_the_written_file(tmp_path):
  path = tmp_path / cache.content_key(method="model_free", num=5) / "q.jsonl"
  made = querygen.cached(path, lambda: querygen.generate_model_free(QUERIES, QRELS, CORPUS, 5))
  again = querygen.cached(path, lambda: pytest.fail("must come from the cache"))
  assert made == again
  assert cache.content_key(method="model_free", num=6) != cache.content_key(method="model_free", num=5)
  assert cache.texts_fingerprint(["ab", "c"]) != cache.texts_fingerprint(["a", "bc"])  # NUL-separated.


def test_mix_hits_the_ratio_of_training_pairs():
  gen = querygen.generate_model_free(QUERIES, QRELS, CORPUS, num=20, seed=0)
  q, rel = querygen.mix(QUERIES, QRELS, gen, ratio=0.5)
  real_pairs = 3  # river, dog, cat (relevance > 0).
  gen_ids = [k for k in q if k.startswith("gen-")]
  assert len(gen_ids) == real_pairs
  assert all(rel[k] == {next(g.doc_id for g in gen if g.text == q[k]): 1} for k in gen_ids)
  assert querygen.mix(QUERIES, QRELS, gen, ratio=0.0) == (QUERIES, QRELS)
  with pytest.raises(ValueError, match="needs 27 generated"):
    querygen.mix(QUERIES, QRELS, gen, ratio=0.9)


def test_seq2seq_interface_with_a_stand_in_model():
  calls = []

  def model(docs):
    calls.append(len(docs))
    return [d.split(".")[0].lower() for d in docs]

  out = querygen.generate_seq2seq(model, CORPUS, ["river", "dog", "cat"], batch_size=2)
  assert calls == [2, 1]
  assert [(g.text, g.doc_id, g.source) for g in out][0] == ("a large stream of water", "river", "seq2seq")


@pytest.mark.slow
def test_seq2seq_generator_with_a_tiny_random_t5(tmp_path):
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  from tests.conftest import write_wordpiece_vocab
  write_wordpiece_vocab(tmp_path)
  torch.manual_seed(0)
  cfg = transformers.T5Config(vocab_size=12, d_model=16, d_ff=32, d_kv=4, num_layers=1, num_heads=2,
                              decoder_start_token_id=0, pad_token_id=0, eos_token_id=3)
  transformers.T5ForConditionalGeneration(cfg).save_pretrained(tmp_path)
  gen = querygen.seq2seq_generator(tmp_path, max_length=4)
  out = gen(["the cat sat", "dogs"])
  assert len(out) == 2 and all(isinstance(t, str) for t in out)
