"""Test set-up: 8 host CPU devices (for sharding tests) before jax is imported anywhere."""
import os

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # Nothing may come from a model hub.
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import shutil  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

FIXTURES = Path(__file__).resolve().parent / "fixtures"


@pytest.fixture(scope="session")
def fixtures() -> Path:
  return FIXTURES


def pytest_configure(config):
  config.addinivalue_line("markers", "slow: needs the real packaged checkpoints (~400 MB download once)")
  config.addinivalue_line("markers", "interop: loads exports in torch libraries (make test-interop)")


def pytest_addoption(parser):
  parser.addoption("--interop", action="store_true",
                   help="run the interop tests (tests/interop: torch, sentence-transformers, onnxruntime)")


def pytest_collection_modifyitems(config, items):
  """The interop suite needs its own venv (make test-interop): skipped unless asked for."""
  if config.getoption("--interop"):
    return
  skip = pytest.mark.skip(reason="interop suite: make test-interop")
  for item in items:
    if "interop" in item.keywords:
      item.add_marker(skip)


def write_wordpiece_vocab(directory: Path) -> Path:
  """A 12-token BERT WordPiece vocabulary (+ tokenizer_config.json) in ``directory``."""
  import json
  words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "cat", "sat", "on", "mat", "##s", "dog"]
  (directory / "vocab.txt").write_text("\n".join(words) + "\n")
  (directory / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "BertTokenizer",
                                                              "do_lower_case": True}))
  return directory


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory, fixtures):
  """Copies of the tiny BERT (student) and MPNet (teacher) fixtures with a shared WordPiece vocab."""
  root = tmp_path_factory.mktemp("models")
  out = {}
  for arch in ("bert", "mpnet"):
    out[arch] = write_wordpiece_vocab(Path(shutil.copytree(fixtures / f"tiny-{arch}", root / arch)))
  return out


@pytest.fixture
def isolated_cache(tmp_path_factory, monkeypatch):
  cache = tmp_path_factory.getbasetemp() / "edistill-cache"  # Shared by the tests: datasets build once.
  monkeypatch.setenv("EDISTILL_CACHE", str(cache))
  return cache
