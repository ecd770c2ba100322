"""Encoder parity with the PyTorch reference (stored outputs) and encoder behaviours."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from edistill.models import encoder, hf_import, kernels
from edistill.models.arch import mpnet

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
  b = mpnet.relative_position_buckets(210)
  # b[context, memory]; n = context - memory; n < 0 (memory to the right) uses buckets 16..31.
  assert b[0, 0] == 0 and b[1, 0] == 1 and b[0, 1] == 17 and b[7, 0] == 7
  assert b[20, 0] == 8 + int(np.log(20 / 8) / np.log(16) * 8)  # = 10, logarithmic range.
  assert b[0, 200] == 31 and b[200, 0] == 15  # Clamped beyond max_distance.


def test_mpnet_position_ids_skip_padding():
  ids = jnp.array([[0, 7, 9, 2, 1, 1]])
  np.testing.assert_array_equal(mpnet.position_ids(ids, 1), [[2, 3, 4, 5, 1, 1]])


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


def test_matmul_custom_backward_equals_autodiff_in_float64_reference():
  """The hand-written backward (materialised kernel transpose, flattened weight gradient) gives
  the gradients of x @ kernel: checked against NumPy float64 formulas for a [B, L, in] input."""
  rng = np.random.default_rng(0)
  x = rng.standard_normal((3, 5, 7)).astype(np.float32)
  kernel = rng.standard_normal((7, 4)).astype(np.float32)
  w = rng.standard_normal((3, 5, 4)).astype(np.float32)  # Loss = sum(w * (x @ kernel)).
  dx, dk = jax.grad(lambda a, k: jnp.sum(w * kernels.cpu_matmul(a, k)), argnums=(0, 1))(x, kernel)
  x64, k64, w64 = (a.astype(np.float64) for a in (x, kernel, w))
  np.testing.assert_allclose(np.asarray(kernels.cpu_matmul(x, kernel)), x64 @ k64, atol=1e-5)
  np.testing.assert_allclose(np.asarray(dx), w64 @ k64.T, atol=1e-5)
  np.testing.assert_allclose(np.asarray(dk), np.einsum("bli,blo->io", x64, w64), atol=1e-5)
  assert np.abs(np.asarray(dk)).max() > 1.0  # Gradients of O(1) scale: the tolerance bites.


def test_exact_gelu_matches_erf_definition_keeps_nan_and_gradient():
  from scipy import special
  x = np.linspace(-6, 6, 101).astype(np.float32)
  gelu = lambda v: encoder._ACTIVATIONS["gelu"](v, kernels.for_backend())  # The backend's exact GELU.
  x64 = x.astype(np.float64)
  np.testing.assert_allclose(np.asarray(gelu(x)), 0.5 * x64 * (1 + special.erf(x64 / np.sqrt(2))), atol=2e-6)
  grad = jax.vmap(jax.grad(gelu))(x)
  expected = 0.5 * (1 + special.erf(x64 / np.sqrt(2))) + x64 * np.exp(-x64 ** 2 / 2) / np.sqrt(2 * np.pi)
  np.testing.assert_allclose(np.asarray(grad), expected, atol=1e-5)
  assert np.isnan(np.asarray(gelu(jnp.array([np.nan, 1.0], jnp.float32)))[0])


def test_cpu_inference_compiler_options_give_the_same_embeddings(fixtures, ref):
  from edistill import xla_options
  assert xla_options.inference_options("cpu") == xla_options.CPU_INFERENCE
  assert xla_options.inference_options("gpu") is None and xla_options.inference_options("tpu") is None
  cfg, params = hf_import.load_params(fixtures / "tiny-bert")
  module = encoder.Encoder(cfg)
  fn = lambda p, i, m: module.apply({"params": p}, i, m)  # noqa: E731
  args = (params, ref["bert_input_ids"], ref["bert_attention_mask"])
  plain, tuned = np.asarray(jax.jit(fn)(*args)), np.asarray(xla_options.inference_jit(fn)(*args))
  assert np.abs(tuned - plain).max() <= 1e-6 and np.abs(plain).mean() > 0.1


def test_output_dim_is_the_projection_width_else_the_hidden_size():
  cfg = encoder.TransformerConfig("bert", 50, 16, 1, 2, 32, 64, 1e-12)
  assert encoder.Encoder(cfg).output_dim == 16 and encoder.Encoder(cfg, projection_dim=8).output_dim == 8
