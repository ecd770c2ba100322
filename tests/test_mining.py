"""Teacher-mined hard negatives against a brute-force reference."""
import numpy as np
import pytest

from edistill.data import mining


def _reference(q, d, positives, depth):
  out = {}
  for row, pos in positives.items():
    scores = d @ q[row]
    floor = scores[pos].min()
    order = sorted(range(len(d)), key=lambda j: (-scores[j], j))
    out[row] = [j for j in order if j not in set(pos.tolist()) and scores[j] < floor][:depth]
  return out


def test_teacher_negatives_match_brute_force_and_leave_out_likely_false_negatives():
  rng = np.random.default_rng(0)
  q, d = rng.standard_normal((30, 8)).astype(np.float32), rng.standard_normal((50, 8)).astype(np.float32)
  positives = {r: rng.choice(50, size=1 + r % 3, replace=False).astype(np.int32) for r in range(0, 30, 2)}
  got = mining.teacher_negatives(q, d, positives, depth=5, chunk=4)
  assert got == _reference(q, d, positives, 5)
  for row, negs in got.items():
    scores = d @ q[row]
    assert all(scores[n] < scores[positives[row]].min() for n in negs) and not set(negs) & set(positives[row])
  # A document scored above the positive (a likely unlabeled relevant one) is never a negative.
  q1, d1 = np.array([[1.0, 0.0]]), np.array([[0.9, 0.0], [1.0, 0.0], [0.5, 0.0], [0.1, 0.0]])
  assert mining.teacher_negatives(q1, d1, {0: np.array([0])}, depth=3) == {0: [2, 3]}
  with pytest.raises(ValueError, match="depth"):
    mining.teacher_negatives(q1, d1, {0: np.array([0])}, depth=0)
