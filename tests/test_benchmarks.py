"""Offline benchmark builders: stdlib end to end; WordNet, GCIDE and Debian parsers on synthetic files."""
from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from edistill.data import benchmarks
from edistill.data.benchmarks import __main__ as cli
from edistill.data.benchmarks import common, debian, stdlib, wordnet_gcide
from edistill.data.types import DataError


def _read_qrels(path: Path) -> dict[str, set[str]]:
  out: dict[str, set[str]] = {}
  for line in path.read_text().splitlines()[1:]:
    q, d, _ = line.split("\t")
    out.setdefault(q, set()).add(d)
  return out


def _ids(path: Path) -> list[str]:
  return [json.loads(line)["_id"] for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def stdlib_collection() -> common.Collection:
  return stdlib.build_stdlib()


# --- stdlib (the CI fixture) ---------------------------------------------------------------------


def test_stdlib_end_to_end(stdlib_collection, tmp_path):
  out = benchmarks.write_collection(stdlib_collection, tmp_path / "full", "stdlib", seed=3)
  manifest = json.loads((out / "manifest.json").read_text())
  assert manifest["counts"]["documents"] > 1000 and manifest["counts"]["queries"] > 1000
  assert manifest["python"] and manifest["options"]["seed"] == 3
  corpus = set(_ids(out / "corpus.jsonl"))
  queries = set(_ids(out / "queries.jsonl"))
  splits = {s: _read_qrels(out / "qrels" / f"{s}.tsv") for s in ("train", "dev", "test")}
  assert (len(splits["test"]), len(splits["dev"])) == benchmarks.BENCHMARKS["stdlib"].pools
  assert not set(splits["train"]) & set(splits["test"])
  assert not set(splits["train"]) & set(splits["dev"])
  assert not set(splits["dev"]) & set(splits["test"])
  assert set().union(*splits.values()) == queries
  assert all(d in corpus for qrels in splits.values() for ds in qrels.values() for d in ds)


def test_stdlib_document_drops_the_docstring_and_query_is_its_first_paragraph():
  source = ('class Box:\n'
            '  def weigh(self, scale):\n'
            '    """Return the weight of the box in grams.\n\n    Details nobody searches for.\n    """\n'
            '    return scale.read(self)  # net\n'
            '  def _private(self):\n    """Private helpers are skipped entirely."""\n    return 1\n'
            'def stub():\n  """A stub has nothing left to retrieve."""\n  ...\n'
            'def short():\n  """Too short."""\n  return 2\n')
  (found,) = stdlib.functions_with_docstrings(source)
  assert found == ("Box.weigh", "Return the weight of the box in grams.",
                   "def weigh(self, scale):\n  return scale.read(self)  # net")


def test_stdlib_builds_are_byte_identical(stdlib_collection, tmp_path):
  a = benchmarks.write_collection(stdlib_collection, tmp_path / "a", "stdlib", seed=1, corpus_size=2000)
  b = benchmarks.write_collection(stdlib.build_stdlib(), tmp_path / "b", "stdlib", seed=1, corpus_size=2000)
  files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
  assert len(files) == 7  # corpus, queries, unlabeled queries, 3 qrels, manifest
  for f in files:
    assert (a / f).read_bytes() == (b / f).read_bytes(), f
  c = benchmarks.write_collection(stdlib_collection, tmp_path / "c", "stdlib", seed=2, corpus_size=2000)
  assert (c / "qrels/test.tsv").read_bytes() != (a / "qrels/test.tsv").read_bytes()


def test_corpus_size_keeps_every_dev_and_test_positive(stdlib_collection, tmp_path):
  full = benchmarks.write_collection(stdlib_collection, tmp_path / "full", "stdlib", seed=0)
  small = benchmarks.write_collection(stdlib_collection, tmp_path / "small", "stdlib", seed=0, corpus_size=1000)
  corpus = set(_ids(small / "corpus.jsonl"))
  assert len(corpus) == 1000
  for split, n in zip(("test", "dev"), benchmarks.default_split_sizes("stdlib", 1000)):
    small_qrels, full_qrels = (_read_qrels(d / "qrels" / f"{split}.tsv") for d in (small, full))
    assert len(small_qrels) == n
    for q, ds in small_qrels.items():
      assert ds == full_qrels[q] and ds <= corpus  # Nested in the full test split, positives intact.
  train = _read_qrels(small / "qrels/train.tsv")
  assert train and all(ds <= corpus for ds in train.values())
  assert not set(train) & set(_read_qrels(full / "qrels/test.tsv"))  # No query is train here, test there.
  # Train queries whose positives were cut become unlabeled queries: never dev/test, never labeled.
  unlabeled = {json.loads(line)["_id"] for line in (small / "unlabeled_queries.jsonl").read_text().splitlines()}
  full_train = _read_qrels(full / "qrels/train.tsv")
  assert unlabeled == set(full_train) - set(train)
  assert all(not full_train[q] & corpus for q in unlabeled)
  assert json.loads((small / "manifest.json").read_text())["counts"]["unlabeled_queries"] == len(unlabeled)
  assert not (full / "unlabeled_queries.jsonl").exists()


def test_split_and_subset_rules():
  qrels = {f"q{i}": {f"d{i}": 1} for i in range(100)}
  splits = common.split_queries(qrels, seed=0, n_test=5, n_dev=4, pools=(10, 10))
  assert [len(splits[s]) for s in ("train", "dev", "test")] == [80, 4, 5]
  bigger = common.split_queries(qrels, seed=0, n_test=10, n_dev=10, pools=(10, 10))
  assert splits["test"] == bigger["test"][:5] and splits["dev"] == bigger["dev"][:4]
  assert splits["train"] == bigger["train"]
  docs = [f"d{i}" for i in range(100)] + [f"x{i}" for i in range(1000)]  # x*: nobody's positive.
  for share, lo, hi in ((0.5, 5, 11), (0.0, 0, 4)):
    keep = common.subset_corpus(docs, qrels, splits, size=20, seed=0, train_share=share)
    assert len(keep) == 20 and {f"d{q[1:]}" for q in splits["test"] + splits["dev"]} <= keep
    assert lo <= sum(f"d{q[1:]}" in keep for q in splits["train"]) <= hi  # Share of the 11 free slots.
  with pytest.raises(DataError, match="corpus_size 5 < 9 dev\\+test positives"):
    common.subset_corpus([f"d{i}" for i in range(100)], qrels, splits, size=5, seed=0)


# --- WordNet + GCIDE ----------------------------------------------------------------------------

DATA_NOUN = """\
  1 This software and database is being provided to you, the LICENSEE, by  
  2 Princeton University under the following license.  
02084071 05 n 03 dog 0 domestic_dog 0 Canis_familiaris 0 002 @ 02083346 n 0000 ~ 01322604 n 0000 | a member of the genus Canis that has been domesticated by man since prehistoric times; "the dog barked all night"  
07739125 13 n 01 apple 0 001 @ 07705931 n 0000 | fruit with red or yellow or green skin and sweet to tart crisp whitish flesh  
09213565 17 n 01 bank 0 001 @ 09457213 n 0000 | sloping land (especially the slope beside a body of water); "they pulled the canoe up on the bank"; "he sat on the bank of the river"  
03123456 06 n 01 kennel 0 000 | a shelter for a dog  
02121620 05 n 02 cat 0 true_cat 0 000 | feline mammal usually having thick soft fur; any true cat  
13162297 20 n 01 bark 0 000 | tough protective covering  
"""

GCIDE_ENTRIES = {
    "Dog": ("Dog \\Dog\\ (d[o^]g), n. [AS. docga.]\n"
            "   1. A quadruped of the genus {Canis}, tamed by man. --Shak.\n"
            "      [1913 Webster]\n\n"
            "   2. a member of the genus Canis that has been domesticated\n"
            "      by man since prehistoric times.\n\n"
            "   Syn: domestic dog, Canis familiaris.\n"
            "        [WordNet 1.5]\n"),
    "Apple": ("Apple \\Ap\"ple\\, n.\n"
              "   The fleshy pome of a rosaceous tree.\n"
              "   [1913 Webster]\n\n"
              "   Syn: pome, fruit.\n"
              "   [1913 Webster]\n"),
    "Bank": ("Bank \\Bank\\, n.\n"
             "   A mound, pile, or ridge of earth. --Holland.\n"
             "   [1913 Webster]\n"),
    "Kennel": ("kennel \\kennel\\ n.\n   1. a shelter for a dog\n   [WordNet 1.5]\n"),
}
B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"


def _dictd(n: int) -> str:
  out = ""
  while True:
    out = B64[n % 64] + out
    n //= 64
    if not n:
      return out


def _write_gcide(tmp_path: Path) -> tuple[Path, Path]:
  blob, index = b"", ["00-database-short\tA\tB"]
  for head, entry in GCIDE_ENTRIES.items():
    data = entry.encode()
    index.append(f"{head}\t{_dictd(len(blob))}\t{_dictd(len(data))}")
    blob += data
  index.append(f"Hound\t{index[1].split(chr(9), 1)[1]}")  # A second headword for the Dog entry.
  (tmp_path / "gcide.index").write_text("\n".join(index) + "\n")
  with gzip.open(tmp_path / "gcide.dict.dz", "wb") as f:
    f.write(blob)
  return tmp_path / "gcide.index", tmp_path / "gcide.dict.dz"


def test_dictd_numbers_are_big_endian_base64():
  assert [wordnet_gcide.dictd_number(c) for c in ("A", "B", "/", "BA", "Gl8J")] == [0, 1, 63, 64, 1728265]
  assert wordnet_gcide.dictd_number(_dictd(123456789)) == 123456789


def test_wordnet_data_lines_and_gloss_queries():
  syns = list(wordnet_gcide.parse_wordnet_data(DATA_NOUN.splitlines()))
  assert [s.synset_id for s in syns] == ["n02084071", "n07739125", "n09213565", "n03123456", "n02121620",
                                         "n13162297"]
  assert syns[0].lemmas == ("dog", "domestic dog", "Canis familiaris")
  assert syns[4].lemmas == ("cat", "true cat")
  assert wordnet_gcide.gloss_definition(syns[2].gloss) == "sloping land (especially the slope beside a body of water)"
  queries = [wordnet_gcide.gloss_query(s) for s in syns]
  assert queries[0] == "a member of the genus Canis that has been domesticated by man since prehistoric times"
  assert queries[3] == "a shelter for a dog"  # "dog" is not one of kennel's lemmas.
  assert queries[4] is None  # Names its own lemma "cat".
  assert queries[5] is None  # Three words.


def test_gcide_cleaning_strips_wordnet_syn_pronunciation_and_citations(tmp_path):
  gcide = wordnet_gcide.read_gcide_files(*_write_gcide(tmp_path))
  assert set(gcide) == {"dog", "apple", "bank", "hound"}  # Kennel is WordNet 1.5 only: no document.
  head, text = gcide["dog"]
  assert head == "Dog"
  assert text == "Dog (d[o^]g), n. [AS. docga.] 1. A quadruped of the genus Canis, tamed by man."
  assert gcide["hound"] == ("Hound", text)
  assert gcide["apple"][1] == "Apple, n. The fleshy pome of a rosaceous tree."
  assert gcide["bank"][1] == "Bank, n. A mound, pile, or ridge of earth."


def test_wordnet_gcide_collection(tmp_path):
  (tmp_path / "wn").mkdir()
  (tmp_path / "wn" / "data.noun").write_text(DATA_NOUN)
  col = wordnet_gcide.build_wordnet_gcide_from(tmp_path / "wn", *_write_gcide(tmp_path))
  assert col.corpus["gcide:apple"].text == "Apple: Apple, n. The fleshy pome of a rosaceous tree."
  assert list(col.queries) == ["n02084071", "n07739125", "n09213565"]  # Kennel: no GCIDE document.
  assert col.qrels == {"n02084071": {"gcide:dog": 1}, "n07739125": {"gcide:apple": 1},
                       "n09213565": {"gcide:bank": 1}}
  assert "domesticated" not in col.corpus["gcide:dog"].text  # The leaked WordNet gloss is gone.
  assert col.manifest["queries_dropped"] == {"filtered": 2, "no_gcide_headword": 1}


def test_other_glosses_are_every_long_enough_gloss_outside_the_collection(tmp_path):
  (tmp_path / "data.noun").write_text(DATA_NOUN)
  (tmp_path / "data.verb").write_text(
      "00001740 29 v 01 breathe 0 001 $ 00001740 v 0000 | draw air into, and expel out of, the lungs\n"
      "00002000 29 v 01 nap 0 000 | sleep briefly\n")
  col_queries = ["n02084071", "n07739125", "n09213565"]  # test_wordnet_gcide_collection's queries.
  got = wordnet_gcide.other_glosses(tmp_path, set(col_queries), pos=("noun", "verb"))
  # Kennel (no GCIDE entry) and cat (names its lemma) join; the three-word glosses do not.
  assert got == {"n03123456": "a shelter for a dog",
                 "n02121620": "feline mammal usually having thick soft fur; any true cat",
                 "v00001740": "draw air into, and expel out of, the lungs"}


# --- Debian -------------------------------------------------------------------------------------

TRANSLATION = """\
Package: foo
Description-md5: 11111111111111111111111111111111
Description-en: fast frobnicator for widgets
 Foo frobnicates widgets at great speed and with little memory.
 .
 It supports both old and new widget formats.

Package: foo-doc
Description-md5: 22222222222222222222222222222222
Description-en: documentation for the fast frobnicator
 This package contains the HTML manual of foo, with many worked examples.

Package: bar
Description-md5: 33333333333333333333333333333333
Description-en: transitional package
 This is a transitional dummy package. It can safely be removed later on.

Package: baz
Description-md5: 44444444444444444444444444444444
Description-en: transitional package
 This is another transitional dummy package that can be removed safely now.

Package: qux
Description-md5: 55555555555555555555555555555555
Description-en: tiny tool
 Too short.
"""
PACKAGES = "Package: foo\nVersion: 1\n\nPackage: foo-doc\nSource: foo (1)\nVersion: 1\n\nPackage: bar\n\n"


def test_translation_parser():
  rows = list(debian.parse_translation(TRANSLATION.splitlines(keepends=True)))
  assert [r[0] for r in rows] == ["foo", "foo-doc", "bar", "baz", "qux"]
  assert rows[0] == ("foo", "1" * 32, "fast frobnicator for widgets",
                     "Foo frobnicates widgets at great speed and with little memory.\n"
                     "It supports both old and new widget formats.")
  assert debian.package_sources(PACKAGES.splitlines()) == {"foo": "foo", "foo-doc": "foo", "bar": "bar"}


def test_debian_pairs_dedupe_by_source_and_drop_ambiguous_synopses():
  rows = debian.parse_translation(TRANSLATION.splitlines())
  col = debian.debian_pairs(rows, debian.package_sources(PACKAGES.splitlines()))
  # foo-doc folds into source foo; bar/baz share a synopsis (ambiguous); qux's description is too short.
  assert col.queries == {"q:foo": "fast frobnicator for widgets"}
  assert col.qrels == {"q:foo": {"deb:foo": 1}}


def test_the_cli_builds_the_same_benchmark_as_training_at_the_same_size(tmp_path, capsys):
  from edistill.data import tfds_builders
  cli.main(["--source", "stdlib", "--out", str(tmp_path / "cli"), "--corpus-size", "800"])
  tfds_builders._build_offline("stdlib", tmp_path / "main", 800, 0)
  built, main = (json.loads((tmp_path / d / "manifest.json").read_text()) for d in ("cli", "main"))
  assert built["options"]["train_share"] == common.TRAIN_SHARE == 0.5
  assert built["sha256"] == main["sha256"] and built["counts"] == main["counts"]


def test_definition_sentence_drops_headword_asides_and_part_of_speech():
  ds = wordnet_gcide.definition_sentence
  assert ds("Ablation: Ablation, n. [L. ablatio, fr. ablatus p. p. of auferre; ab + latus. See Tolerate.] "
            "1. A carrying or taking away; removal. 2. (Med.) Extirpation.") == "A carrying or taking away; removal"
  assert ds("Coontie: Coontie, n. (Bot.) A cycadaceous plant of Florida, from which sago is prepared.") == \
      "A cycadaceous plant of Florida, from which sago is prepared"
  # Nested asides go innermost first; a 3-word sense is too short, so the next sentence is taken.
  assert ds("Painable: Painable, a. [Cf. F. p['e]nible.] Causing pain; painful. [Obs.] The manacles were "
            "the less weighty.") == "The manacles were the less weighty"
  assert ds("Ardor: Ardor, n. Heat.") is None
  assert len(ds("X: X, n. " + "word " * 60, max_words=40).split()) == 40


def test_gcide_definitions_leave_out_the_slices_documents_and_repeated_sentences(monkeypatch):
  from edistill.data.types import Document
  corpus = {"gcide:a": Document("gcide:a", "A: A, n. The first letter of the alphabet."),
            "gcide:b": Document("gcide:b", "B: B, n. The second letter of the alphabet."),
            "gcide:b2": Document("gcide:b2", "B2: B, n. The second letter of the alphabet."),
            "gcide:c": Document("gcide:c", "C: C, n. The third letter of the alphabet.")}
  monkeypatch.setattr(wordnet_gcide, "build_wordnet_gcide", lambda root=None: common.Collection(corpus, {}, {}))
  assert wordnet_gcide.gcide_definitions({"gcide:a"}) == {
      "def:gcide:b": "The second letter of the alphabet", "def:gcide:c": "The third letter of the alphabet"}
