"""Encoder parity with the PyTorch reference (stored outputs) and encoder behaviours."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from edistill.models import encoder, hf_import

TOL = 1e-5


@pytest.fixture(scope="module")
def ref(fixtures):
  return dict(np.load(fixtures / "tiny_reference.npz"))


def _states(ckpt, ref, arch, num_layers=None):
  cfg = hf_import.read_config(ckpt)
  cfg, params = hf_import.load_params(ckpt, cfg.with_layers(num_layers) if num_layers else None)
  module = encoder.Encoder(cfg)
  types = ref.get(f"{arch}_token_type_ids")
  return jax.jit(lambda p, i, m, t: module.apply({"params": p}, i, m, t, method=module.encode_tokens))(
      params, ref[f"{arch}_input_ids"], ref[f"{arch}_attention_mask"], types)


@pytest.mark.parametrize("arch", ["bert", "mpnet"])
def test_tiny_token_states_match_pytorch(fixtures, ref, arch):
  states = _states(fixtures / f"tiny-{arch}", ref, arch)
  assert np.abs(np.asarray(states) - ref[f"{arch}_states"]).max() <= TOL
  # The reference states are O(1): a tolerance of 1e-5 is meaningful.
  assert np.abs(ref[f"{arch}_states"]).mean() > 0.3


@pytest.mark.parametrize("arch", ["bert", "mpnet"])
def test_first_layer_subset_matches_pytorch_one_layer_model(fixtures, ref, arch):
  states = _states(fixtures / f"tiny-{arch}", ref, arch, num_layers=1)
  assert np.abs(np.asarray(states) - ref[f"{arch}_l1_states"]).max() <= TOL


@pytest.mark.parametrize("arch", ["bert", "mpnet"])
def test_mean_pooled_embedding_matches_pytorch(fixtures, ref, arch):
  cfg, params = hf_import.load_params(fixtures / f"tiny-{arch}")
  module = encoder.Encoder(cfg, pooling="mean")
  emb = module.apply({"params": params}, ref[f"{arch}_input_ids"], ref[f"{arch}_attention_mask"],
                     ref.get(f"{arch}_token_type_ids"))
  assert emb.shape == (16, 32) and emb.dtype == jnp.float32
  assert np.abs(np.asarray(emb) - ref[f"{arch}_mean"]).max() <= TOL


def test_cls_pooling_takes_first_token_and_normalize_gives_unit_rows(fixtures, ref):
  cfg, params = hf_import.load_params(fixtures / "tiny-bert")
  ids, mask, types = ref["bert_input_ids"], ref["bert_attention_mask"], ref["bert_token_type_ids"]
  emb = encoder.Encoder(cfg, pooling="cls", normalize=True).apply({"params": params}, ids, mask, types)
  cls = ref["bert_states"][:, 0]
  np.testing.assert_allclose(np.asarray(emb), cls / np.linalg.norm(cls, axis=1, keepdims=True), atol=TOL)


def test_projection_head_is_a_linear_map_of_the_pooled_embedding(fixtures, ref):
  cfg, params = hf_import.load_params(fixtures / "tiny-bert")
  module = encoder.Encoder(cfg, projection_dim=8)
  init = module.init(jax.random.key(0), ref["bert_input_ids"][:2], ref["bert_attention_mask"][:2])
  params = {**params, "projection": init["params"]["projection"]}
  emb = module.apply({"params": params}, ref["bert_input_ids"], ref["bert_attention_mask"],
                     ref["bert_token_type_ids"])
  proj = params["projection"]
  expected = ref["bert_mean"] @ np.asarray(proj["kernel"]) + np.asarray(proj["bias"])
  assert emb.shape == (16, 8)
  np.testing.assert_allclose(np.asarray(emb), expected, atol=TOL)


def test_bfloat16_compute_stays_close_to_float32(fixtures, ref):
  cfg, params = hf_import.load_params(fixtures / "tiny-mpnet")
  args = (ref["mpnet_input_ids"], ref["mpnet_attention_mask"])
  f32 = encoder.Encoder(cfg, normalize=True).apply({"params": params}, *args)
  bf16 = encoder.Encoder(cfg, normalize=True, dtype=jnp.bfloat16).apply({"params": params}, *args)
  assert bf16.dtype == jnp.float32  # Pooled outputs are float32 whatever the compute dtype.
  cos = np.sum(np.asarray(f32) * np.asarray(bf16), axis=1)
  assert cos.min() > 0.99
  assert np.abs(np.asarray(f32) - np.asarray(bf16)).max() > 1e-4  # bf16 really was used.


def test_padding_does_not_change_the_embedding(fixtures, ref):
  cfg, params = hf_import.load_params(fixtures / "tiny-mpnet")
  module = encoder.Encoder(cfg)
  ids, mask = ref["mpnet_input_ids"][:4], ref["mpnet_attention_mask"][:4]
  short = int(mask.sum(1).max())
  full = module.apply({"params": params}, ids, mask)
  cut = module.apply({"params": params}, ids[:, :short], mask[:, :short])
  np.testing.assert_allclose(np.asarray(full), np.asarray(cut), atol=TOL)


def test_dropout_is_active_only_when_not_deterministic(fixtures, ref):
  cfg, params = hf_import.load_params(fixtures / "tiny-bert")
  module = encoder.Encoder(cfg)
  args = (ref["bert_input_ids"][:2], ref["bert_attention_mask"][:2])
  a = module.apply({"params": params}, *args)
  b = module.apply({"params": params}, *args, deterministic=False, rngs={"dropout": jax.random.key(1)})
  assert np.abs(np.asarray(a) - np.asarray(b)).max() > 1e-3


def test_relative_position_buckets_hand_computed():
  b = encoder.relative_position_buckets(210)
  # b[context, memory]; n = context - memory; n < 0 (memory to the right) uses buckets 16..31.
  assert b[0, 0] == 0 and b[1, 0] == 1 and b[0, 1] == 17 and b[7, 0] == 7
  assert b[20, 0] == 8 + int(np.log(20 / 8) / np.log(16) * 8)  # = 10, logarithmic range.
  assert b[0, 200] == 31 and b[200, 0] == 15  # Clamped beyond max_distance.


def test_mpnet_position_ids_skip_padding():
  ids = jnp.array([[0, 7, 9, 2, 1, 1]])
  np.testing.assert_array_equal(encoder.mpnet_position_ids(ids, 1), [[2, 3, 4, 5, 1, 1]])


def test_invalid_configuration_is_rejected():
  with pytest.raises(ValueError, match="gpt2"):
    encoder.TransformerConfig("gpt2", 10, 8, 1, 2, 16, 16, 1e-5)
  with pytest.raises(ValueError, match="divisible"):
    encoder.TransformerConfig("bert", 10, 10, 1, 3, 16, 16, 1e-5)
  cfg = encoder.TransformerConfig("bert", 10, 8, 2, 2, 16, 16, 1e-5)
  with pytest.raises(ValueError, match="num_layers"):
    cfg.with_layers(3)
  with pytest.raises(ValueError, match="pooling"):
    encoder.Encoder(cfg, pooling="max").init(jax.random.key(0), jnp.ones((1, 4), jnp.int32),
                                             jnp.ones((1, 4), jnp.int32))
