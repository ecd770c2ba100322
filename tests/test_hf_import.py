"""Reading HF checkpoint directories (safetensors and torch .bin), clear errors, and export."""
import json
import shutil

import jax
import numpy as np
import pytest
import safetensors.numpy

from edistill.models import encoder, hf_import, tokenization
from tests.conftest import write_wordpiece_vocab


def _copy(src, dst):
  shutil.copytree(src, dst)
  return dst


def test_torch_bin_reads_the_same_tensors_as_safetensors(fixtures):
  from_bin = hf_import.read_tensors(fixtures / "tiny-bert-bin")
  from_st = hf_import.read_tensors(fixtures / "tiny-bert")
  assert set(from_st) <= set(from_bin)
  for name, value in from_st.items():
    np.testing.assert_array_equal(from_bin[name], value, err_msg=name)


def test_torch_bin_checkpoint_loads_into_the_same_params(fixtures):
  _, a = hf_import.load_params(fixtures / "tiny-bert-bin")
  _, b = hf_import.load_params(fixtures / "tiny-bert")
  jax.tree.map(np.testing.assert_array_equal, a, b)


def test_torch_bin_with_foreign_globals_is_refused(tmp_path, fixtures):
  import pickle
  import zipfile
  d = _copy(fixtures / "tiny-bert-bin", tmp_path / "ckpt")
  with zipfile.ZipFile(d / "pytorch_model.bin", "w") as zf:
    zf.writestr("archive/data.pkl", pickle.dumps(print))
  with pytest.raises(hf_import.CheckpointError, match="refusing to unpickle builtins.print"):
    hf_import.read_tensors(d)


def test_task_model_prefix_is_stripped(tmp_path, fixtures):
  d = _copy(fixtures / "tiny-mpnet", tmp_path / "ckpt")
  tensors = safetensors.numpy.load_file(str(d / "model.safetensors"))
  safetensors.numpy.save_file({f"mpnet.{k}": v for k, v in tensors.items()}, str(d / "model.safetensors"))
  _, a = hf_import.load_params(d)
  _, b = hf_import.load_params(fixtures / "tiny-mpnet")
  jax.tree.map(np.testing.assert_array_equal, a, b)


def test_missing_directory_files_name_the_directory(tmp_path):
  with pytest.raises(hf_import.CheckpointError, match=f"{tmp_path}: no config.json"):
    hf_import.read_config(tmp_path)
  (tmp_path / "config.json").write_text("{not json")
  with pytest.raises(hf_import.CheckpointError, match="config.json: invalid JSON"):
    hf_import.read_config(tmp_path)


def test_unknown_architecture_is_named(tmp_path, fixtures):
  d = _copy(fixtures / "tiny-bert", tmp_path / "ckpt")
  cfg = json.loads((d / "config.json").read_text())
  (d / "config.json").write_text(json.dumps({**cfg, "model_type": "gpt2"}))
  with pytest.raises(hf_import.CheckpointError, match="model_type 'gpt2' is not supported"):
    hf_import.load_params(d)


def test_missing_weights_file(tmp_path, fixtures):
  d = _copy(fixtures / "tiny-bert", tmp_path / "ckpt")
  (d / "model.safetensors").unlink()
  with pytest.raises(hf_import.CheckpointError, match="no model.safetensors or pytorch_model.bin"):
    hf_import.load_params(d)


def test_corrupt_weights_file(tmp_path, fixtures):
  d = _copy(fixtures / "tiny-bert", tmp_path / "ckpt")
  (d / "model.safetensors").write_bytes(b"\x00garbage")
  with pytest.raises(hf_import.CheckpointError, match="cannot read safetensors"):
    hf_import.load_params(d)


def test_missing_tensor_is_named(tmp_path, fixtures):
  d = _copy(fixtures / "tiny-bert", tmp_path / "ckpt")
  tensors = safetensors.numpy.load_file(str(d / "model.safetensors"))
  del tensors["encoder.layer.1.output.dense.weight"]
  safetensors.numpy.save_file(tensors, str(d / "model.safetensors"))
  with pytest.raises(hf_import.CheckpointError, match=r"missing tensors \['encoder.layer.1.output.dense.weight'\]"):
    hf_import.load_params(d)


def test_misshaped_tensor_is_named(tmp_path, fixtures):
  d = _copy(fixtures / "tiny-bert", tmp_path / "ckpt")
  tensors = safetensors.numpy.load_file(str(d / "model.safetensors"))
  name = "encoder.layer.0.intermediate.dense.weight"  # [64, 32]; same size transposed must fail too.
  tensors[name] = np.ascontiguousarray(tensors[name].T)
  safetensors.numpy.save_file(tensors, str(d / "model.safetensors"))
  with pytest.raises(hf_import.CheckpointError, match=rf"{name} has shape \(32, 64\), expected \(64, 32\)"):
    hf_import.load_params(d)


def test_requesting_more_layers_than_stored_fails(fixtures):
  cfg = hf_import.read_config(fixtures / "tiny-bert")
  with pytest.raises(hf_import.CheckpointError, match="only num_layers may be smaller"):
    hf_import.load_params(fixtures / "tiny-bert", encoder.TransformerConfig(**{**cfg.__dict__, "num_layers": 3}))


def test_layer_subset_keeps_only_the_first_layers(fixtures):
  cfg = hf_import.read_config(fixtures / "tiny-mpnet").with_layers(1)
  _, params = hf_import.load_params(fixtures / "tiny-mpnet", cfg)
  assert sorted(params) == ["embeddings", "layer_0", "rel_bias"]


@pytest.mark.parametrize("arch", ["bert", "mpnet"])
def test_export_writes_the_original_hf_tensors_back(tmp_path, fixtures, arch):
  cfg, params = hf_import.load_params(fixtures / f"tiny-{arch}")
  out = hf_import.export(params, cfg, hf_import.HeadConfig(), tmp_path / "export", tokenizer_dir=tmp_path)
  original = safetensors.numpy.load_file(str(fixtures / f"tiny-{arch}" / "model.safetensors"))
  written = safetensors.numpy.load_file(str(out / "model.safetensors"))
  pooler = {"pooler.dense.weight", "pooler.dense.bias"}
  assert set(written) == set(original) - {"embeddings.position_ids"} | pooler
  for name, value in written.items():
    if name not in pooler:
      np.testing.assert_array_equal(value, original[name], err_msg=name)
  assert hf_import.read_config(out) == cfg
  hf_cfg = json.loads((out / "config.json").read_text())
  ref_cfg = json.loads((fixtures / f"tiny-{arch}" / "config.json").read_text())
  for key in ("model_type", "hidden_size", "num_hidden_layers", "num_attention_heads", "vocab_size",
              "intermediate_size", "max_position_embeddings", "layer_norm_eps"):
    assert hf_cfg[key] == ref_cfg[key], key


def test_export_writes_a_zero_pooler_so_automodel_finds_every_tensor(tmp_path, fixtures):
  """AutoModel builds BERT's / MPNet's [CLS] pooler; without it in the file it reported it MISSING and
  initialised it at random. edistill's embeddings never read it: zeros (pooler_output = 0)."""
  cfg, params = hf_import.load_params(fixtures / "tiny-bert")
  out = hf_import.export(params, cfg, hf_import.HeadConfig(), tmp_path / "export", tokenizer_dir=tmp_path)
  written = safetensors.numpy.load_file(str(out / "model.safetensors"))
  np.testing.assert_array_equal(written["pooler.dense.weight"], np.zeros((cfg.hidden_size, cfg.hidden_size)))
  np.testing.assert_array_equal(written["pooler.dense.bias"], np.zeros(cfg.hidden_size))
  _, back = hf_import.load_params(out)  # Reading it back ignores the pooler.
  assert "pooler" not in back


def test_export_files_are_readable_as_the_umask_allows(tmp_path, fixtures):
  """safetensors writes its files 0600: an export (weights included) is meant to be shared."""
  import os
  cfg, params = hf_import.load_params(fixtures / "tiny-bert")
  module = encoder.Encoder(cfg, "mean", True, 5)
  ids = np.ones((1, 4), np.int32)
  params["projection"] = jax.tree.map(np.asarray, module.init(jax.random.key(0), ids, ids)["params"]["projection"])
  old = os.umask(0o022)
  try:
    out = hf_import.export(params, cfg, hf_import.HeadConfig("mean", True, 5), tmp_path / "export", fixtures / "tiny-bert")
  finally:
    os.umask(old)
  modes = {str(p.relative_to(out)): oct(p.stat().st_mode & 0o777) for p in out.rglob("*") if p.is_file()}
  assert "model.safetensors" in modes and "2_Dense/model.safetensors" in modes
  assert set(modes.values()) == {"0o644"}, modes


def test_export_records_its_length_for_sentence_transformers_and_the_tokenizer(tmp_path, fixtures):
  cfg, params = hf_import.load_params(fixtures / "tiny-bert")
  write_wordpiece_vocab(tmp_path)
  out = hf_import.export(params, cfg, hf_import.HeadConfig(), tmp_path / "export", tokenizer_dir=tmp_path,
                         max_seq_length=24)
  assert json.loads((out / "sentence_bert_config.json").read_text())["max_seq_length"] == 24
  assert json.loads((out / "tokenizer_config.json").read_text())["model_max_length"] == 24  # transformers' truncation.
  assert json.loads((out / "config_sentence_transformers.json").read_text())["similarity_fn_name"] == "dot"
  assert hf_import.read_max_seq_length(out) == 24
  assert hf_import.read_max_seq_length(fixtures / "tiny-bert") is None


def test_export_round_trip_keeps_head_and_embeddings(tmp_path, fixtures):
  ref = np.load(fixtures / "tiny_reference.npz")
  ids, mask = ref["mpnet_input_ids"], ref["mpnet_attention_mask"]
  cfg, params = hf_import.load_params(fixtures / "tiny-mpnet")
  head = hf_import.HeadConfig(pooling="cls", normalize=True, projection_dim=6)
  module = encoder.Encoder(cfg, head.pooling, head.normalize, head.projection_dim)
  params["projection"] = module.init(jax.random.key(3), ids[:1], mask[:1])["params"]["projection"]
  before = module.apply({"params": params}, ids, mask)

  out = hf_import.export(params, cfg, head, tmp_path / "export", tokenizer_dir=tmp_path)
  assert hf_import.read_head(out) == head
  cfg2, params2 = hf_import.load_params(out)
  params2["projection"] = hf_import.load_head_params(out, head, cfg2.hidden_size)
  after = encoder.Encoder(cfg2, head.pooling, head.normalize, head.projection_dim).apply({"params": params2}, ids, mask)
  np.testing.assert_array_equal(np.asarray(before), np.asarray(after))
  modules = json.loads((out / "modules.json").read_text())
  assert [m["type"].rsplit(".", 1)[1] for m in modules] == ["Transformer", "Pooling", "Dense", "Normalize"]


def test_normalize_first_head_is_projection_of_the_unit_vector_and_round_trips(tmp_path, fixtures):
  ref = np.load(fixtures / "tiny_reference.npz")
  ids, mask = ref["bert_input_ids"], ref["bert_attention_mask"]
  cfg, params = hf_import.load_params(fixtures / "tiny-bert")
  head = hf_import.HeadConfig(pooling="mean", normalize=True, projection_dim=5, normalize_first=True)
  module = encoder.Encoder(cfg, head.pooling, head.normalize, head.projection_dim, normalize_first=True)
  params["projection"] = jax.tree.map(np.asarray, module.init(jax.random.key(4), ids[:1], mask[:1])["params"]["projection"])
  got = np.asarray(module.apply({"params": params}, ids, mask))
  pooled = np.asarray(encoder.Encoder(cfg, "mean").apply({"params": params}, ids, mask), np.float64)
  unit = pooled / np.linalg.norm(pooled, axis=-1, keepdims=True)
  np.testing.assert_allclose(got, unit @ params["projection"]["kernel"] + params["projection"]["bias"], atol=1e-5)
  assert not np.allclose(np.linalg.norm(got, axis=-1), 1.0)  # Not re-normalised after the projection.

  out = hf_import.export(params, cfg, head, tmp_path / "export", tokenizer_dir=fixtures / "tiny-bert")
  modules = json.loads((out / "modules.json").read_text())
  assert [m["type"].rsplit(".", 1)[1] for m in modules] == ["Transformer", "Pooling", "Normalize", "Dense"]
  assert hf_import.read_head(out) == head
  cfg2, params2 = hf_import.load_params(out)
  params2["projection"] = hf_import.load_head_params(out, head, cfg2.hidden_size)
  np.testing.assert_array_equal(got, np.asarray(module.apply({"params": params2}, ids, mask)))


def test_read_head_rejects_two_normalize_modules(tmp_path):
  modules = [{"idx": i, "name": str(i), "path": p, "type": f"sentence_transformers.models.{t}"}
             for i, (p, t) in enumerate([("", "Transformer"), ("1_Normalize", "Normalize"), ("2_Normalize", "Normalize")])]
  (tmp_path / "modules.json").write_text(json.dumps(modules))
  with pytest.raises(hf_import.CheckpointError, match="more than one Normalize"):
    hf_import.read_head(tmp_path)


def test_export_replaces_an_existing_export_atomically(tmp_path, fixtures):
  cfg, params = hf_import.load_params(fixtures / "tiny-bert")
  out = tmp_path / "export"
  out.mkdir()
  (out / "stale.txt").write_text("old")
  hf_import.export(params, cfg, hf_import.HeadConfig(), out, tokenizer_dir=tmp_path)
  assert not (out / "stale.txt").exists() and (out / "model.safetensors").is_file()
  assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]


@pytest.mark.slow
def test_export_loads_in_transformers_as_the_same_model(tmp_path, fixtures):
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  ref = np.load(fixtures / "tiny_reference.npz")
  cfg, params = hf_import.load_params(fixtures / "tiny-mpnet")
  out = hf_import.export(params, cfg, hf_import.HeadConfig(), tmp_path / "export", tokenizer_dir=tmp_path)
  model = transformers.AutoModel.from_pretrained(out, attn_implementation="eager").eval()
  with torch.no_grad():
    states = model(input_ids=torch.tensor(ref["mpnet_input_ids"], dtype=torch.long),
                   attention_mask=torch.tensor(ref["mpnet_attention_mask"])).last_hidden_state
  assert np.abs(states.numpy() - ref["mpnet_states"]).max() <= 1e-5


# ------------------------------------------------------------------------------ tokenization
def test_tokenize_pads_to_fixed_length_with_int32(tmp_path):
  tok = tokenization.load_tokenizer(write_wordpiece_vocab(tmp_path))
  batch = tokenization.tokenize(tok, ["The cat sat", "dogs"], max_length=8)
  np.testing.assert_array_equal(batch["input_ids"], [[2, 5, 6, 7, 3, 0, 0, 0], [2, 11, 10, 3, 0, 0, 0, 0]])
  np.testing.assert_array_equal(batch["attention_mask"], [[1] * 5 + [0] * 3, [1] * 4 + [0] * 4])
  assert all(v.dtype == np.int32 and v.shape == (2, 8) for v in batch.values())


def test_tokenize_truncates_and_buckets(tmp_path):
  tok = tokenization.load_tokenizer(write_wordpiece_vocab(tmp_path))
  long = tokenization.tokenize(tok, ["the cat " * 20], max_length=8)
  assert long["input_ids"].shape == (1, 8) and long["input_ids"][0, -1] == 3  # [SEP] kept.
  short = tokenization.tokenize(tok, ["the cat", "the"], max_length=64, bucket=16)
  assert short["input_ids"].shape == (2, 16)
  assert tokenization.padded_length(17, 64, 16) == 32 and tokenization.padded_length(70, 64, 16) == 64


def test_tokenizer_needs_files(tmp_path):
  with pytest.raises(FileNotFoundError, match="no tokenizer.json or vocab.txt"):
    tokenization.load_tokenizer(tmp_path)
