"""Named checkpoints, and parity of the real packaged MiniLM / MPNet with PyTorch (slow)."""
import shutil
from pathlib import Path

import jax
import numpy as np
import pytest

from edistill.models import zoo
from tests.conftest import write_wordpiece_vocab


def test_local_directory_resolves_to_itself(fixtures):
  assert zoo.resolve(fixtures / "tiny-bert") == fixtures / "tiny-bert"


def test_unknown_name_is_a_clear_error(tmp_path):
  with pytest.raises(zoo.ZooError, match="'bert-huge' is neither a named checkpoint"):
    zoo.resolve("bert-huge")
  with pytest.raises(zoo.ZooError, match="no config.json"):
    zoo.resolve(tmp_path)


def test_assembled_checkpoint_is_reused_from_the_cache(tmp_path, monkeypatch):
  done = tmp_path / "mpnet-base"
  done.mkdir()
  (done / ".complete").write_text("x")
  monkeypatch.setattr(zoo, "_pip_download", lambda *a: pytest.fail("must not download again"))
  assert zoo.resolve("mpnet-base", root=tmp_path) == done


def test_checksum_mismatch_is_refused_and_nothing_is_installed(tmp_path):
  model = tmp_path / "partial" / "model"
  model.mkdir(parents=True)
  (model / "model.safetensors").write_bytes(b"tampered")
  with pytest.raises(zoo.ZooError, match="sha256 .* != expected"):
    zoo._finish(model, tmp_path / "target", "0" * 64, tmp_path / "partial")
  assert not (tmp_path / "target").exists()


def test_load_applies_head_overrides(tmp_path, fixtures):
  ckpt = write_wordpiece_vocab(Path(shutil.copytree(fixtures / "tiny-bert", tmp_path / "ckpt")))
  pre = zoo.load(ckpt, num_layers=1, pooling="cls", normalize=True)
  assert pre.config.num_layers == 1 and pre.module.pooling == "cls" and pre.module.normalize
  assert "layer_1" not in pre.params
  assert pre.tokenize(["the cat"], max_length=6)["input_ids"].tolist() == [[2, 5, 6, 3, 0, 0]]


def test_load_of_an_export_tokenizes_at_the_exports_length_unless_told(tmp_path, fixtures):
  from edistill.models import hf_import
  ckpt = write_wordpiece_vocab(Path(shutil.copytree(fixtures / "tiny-bert", tmp_path / "ckpt")))
  pre = zoo.load(ckpt)
  assert pre.max_seq_length is None
  with pytest.raises(ValueError, match="states no max_seq_length: pass max_length"):
    pre.tokenize(["the cat"])
  out = hf_import.export(pre.params, pre.config, pre.head, tmp_path / "export", ckpt, max_seq_length=4)
  exported = zoo.load(out)
  assert exported.max_seq_length == 4
  assert exported.tokenize(["the cat sat on the mat"])["input_ids"].tolist() == [[2, 5, 6, 3]]
  assert exported.tokenize(["the cat"], max_length=6)["input_ids"].shape == (1, 6)  # An explicit length wins.


def test_named_checkpoints_export_under_their_hub_identity():
  assert zoo.identity("mpnet-base") == "sentence-transformers/all-mpnet-base-v2"
  assert zoo.identity("minilm-l6") == "sentence-transformers/all-MiniLM-L6-v2"
  assert zoo.identity("/data/my-model") == "/data/my-model"


def test_dropout_override_changes_training_noise_only(tmp_path, fixtures):
  ckpt = write_wordpiece_vocab(Path(shutil.copytree(fixtures / "tiny-bert", tmp_path / "ckpt")))
  stored, off = zoo.load(ckpt), zoo.load(ckpt, dropout=0.0)
  assert stored.config.hidden_dropout > 0 and off.config.hidden_dropout == off.config.attention_dropout == 0.0
  ids = np.asarray(off.tokenize(["the cat sat"], max_length=8)["input_ids"])
  mask = (ids != 0).astype(np.int32)
  train = lambda pre: pre.module.apply({"params": pre.params}, ids, mask, deterministic=False,
                                       rngs={"dropout": jax.random.key(0)})
  # Without dropout a training-mode forward is the inference forward; with the stored rate it is not.
  np.testing.assert_allclose(train(off), off.module.apply({"params": off.params}, ids, mask), atol=1e-6)
  assert np.abs(train(stored) - train(off)).max() > 1e-3


# --------------------------------------------------------------------------- real checkpoints
@pytest.fixture(scope="module")
def real(fixtures):
  return dict(np.load(fixtures / "real_reference.npz"))


@pytest.mark.slow
@pytest.mark.parametrize("key,name,layers", [("minilm", "minilm-l6", None), ("minilm_l2", "minilm-l6", 2),
                                             ("mpnet", "mpnet-base", None)])
def test_packaged_model_matches_pytorch(real, key, name, layers):
  pre = zoo.load(name, num_layers=layers, normalize=False)
  batch = pre.tokenize(list(real["sentences"]), max_length=128)
  np.testing.assert_array_equal(batch["input_ids"], real[f"{key}_input_ids"])
  apply = jax.jit(lambda p, b: pre.module.apply({"params": p}, b["input_ids"], b["attention_mask"]))
  emb = np.asarray(apply(pre.params, batch))
  assert np.abs(emb - real[f"{key}_mean"]).max() <= 1e-5


@pytest.mark.slow
def test_packaged_models_report_their_published_heads():
  for name, hidden, layers in (("minilm-l6", 384, 6), ("mpnet-base", 768, 12)):
    pre = zoo.load(name)
    assert (pre.config.hidden_size, pre.config.num_layers) == (hidden, layers)
    assert pre.head.pooling == "mean" and pre.head.normalize
