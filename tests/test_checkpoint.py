"""Initialising from another run's checkpoint: params only, renamed, with fresh leaves where asked."""
import numpy as np
import optax
import pytest

from edistill import checkpoint
from edistill.train import state as state_lib


def _saved(tmp_path):
  params = {"query_tower": {"w": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.ones(3, np.float32)}}
  state = state_lib.create(params, optax.adamw(1e-3), seed=0)  # Another optimizer than the new run's.
  ckpt = checkpoint.Checkpointer(tmp_path / "ckpt")
  ckpt.save(5, state)
  ckpt.close()
  return params, tmp_path / "ckpt"


def test_params_come_from_the_checkpoint_and_a_missing_leaf_keeps_its_fresh_value(tmp_path):
  saved, path = _saved(tmp_path)
  init = {"query_tower": {"w": np.zeros((2, 3), np.float32), "b": np.zeros(3, np.float32)},
          "query_projection": {"kernel": np.full((3, 4), 7.0, np.float32)}}
  out = checkpoint.init_params_from(path, init, missing="init")
  np.testing.assert_array_equal(out["query_tower"]["w"], saved["query_tower"]["w"])
  np.testing.assert_array_equal(out["query_tower"]["b"], saved["query_tower"]["b"])
  np.testing.assert_array_equal(out["query_projection"]["kernel"], init["query_projection"]["kernel"])
  with pytest.raises(checkpoint.CheckpointNotFoundError, match="no 'query_projection/kernel'.*init_from_remap"):
    checkpoint.init_params_from(path, init)


def test_remap_renames_the_checkpoint_leaves_and_shapes_must_agree(tmp_path):
  saved, path = _saved(tmp_path)
  init = {"doc_tower": {"w": np.zeros((2, 3), np.float32), "b": np.zeros(3, np.float32)}}
  out = checkpoint.init_params_from(path, init, remap=("^query_tower/(.*)=doc_tower/\\1",))
  np.testing.assert_array_equal(out["doc_tower"]["w"], saved["query_tower"]["w"])
  with pytest.raises(ValueError, match="'doc_tower/w' has shape \\(2, 3\\) in the checkpoint, \\(3, 2\\)"):
    checkpoint.init_params_from(path, {"doc_tower": {"w": np.zeros((3, 2), np.float32)}},
                                remap=("^query_tower/(.*)=doc_tower/\\1",))
  with pytest.raises(ValueError, match="expected 'PATTERN=REPLACEMENT'"):
    checkpoint.init_params_from(path, init, remap=("query_tower",))
