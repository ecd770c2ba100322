"""RowTable: a sharded [N, D] table whose rows are gathered without reading the rest."""
import numpy as np
import pytest

from edistill.data import tables


def _shards(tmp_path, sizes=(5, 1, 7), dim=3):
  rng = np.random.default_rng(0)
  whole = rng.normal(size=(sum(sizes), dim)).astype(np.float32)
  out, start = [], 0
  for i, n in enumerate(sizes):
    np.save(tmp_path / f"s{i}.npy", whole[start:start + n])
    out.append(np.load(tmp_path / f"s{i}.npy", mmap_mode="r"))
    start += n
  return whole, out


def test_take_across_shards_equals_indexing_the_whole_table(tmp_path):
  whole, shards = _shards(tmp_path)
  t = tables.RowTable(shards)
  assert t.shape == (13, 3) and len(t) == 13 and t.dtype == np.float32
  index = np.array([[12, 0, 5], [6, 4, 5]])
  np.testing.assert_array_equal(t.take(index), whole[index])
  np.testing.assert_array_equal(t[3], whole[3])
  np.testing.assert_array_equal(t[4:9], whole[4:9])
  np.testing.assert_array_equal(np.asarray(t), whole)
  assert t.take(np.zeros((0,), np.int64)).shape == (0, 3)


def test_concat_appends_rows_without_copying_the_shards(tmp_path):
  whole, shards = _shards(tmp_path)
  extra = np.ones((2, 3), np.float32)
  t = tables.RowTable(shards).concat(extra)
  assert t.shards[:3] == tuple(shards) and t.shape == (15, 3)
  np.testing.assert_array_equal(t.take(np.array([14, 13, 12])), np.concatenate([whole, extra])[[14, 13, 12]])
  np.testing.assert_array_equal(np.asarray(tables.as_table(whole)), whole)


def test_bad_shapes_and_rows_fail_loudly(tmp_path):
  whole, shards = _shards(tmp_path)
  with pytest.raises(IndexError, match=r"row index out of range \[0, 13\): min 0, max 13"):
    tables.RowTable(shards).take(np.array([0, 13]))
  with pytest.raises(IndexError, match="min -1"):
    tables.RowTable(shards).take(np.array([-1]))
  with pytest.raises(ValueError, match="one width"):
    tables.RowTable([whole, whole[:, :2]])
  with pytest.raises(ValueError, match="at least one shard"):
    tables.RowTable([])
