"""benchmarks/st_peers.py's training columns: margin_mse mines negatives as edistill does, mnrl carries the
config's hard negatives (no torch needed)."""
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Run in a child: the script defines absl flags at import, which must not collide with this process's.
_CHILD = r"""
import json, sys, types
import numpy as np
sys.path.insert(0, sys.argv[1] + "/benchmarks")
import st_peers
rng = np.random.default_rng(0)
tq, td = rng.normal(size=(6, 4)).astype(np.float32), rng.normal(size=(9, 4)).astype(np.float32)
ex = types.SimpleNamespace(query=np.array([0, 1, 2, 0, 5]), docs=np.array([[3], [4], [0], [3], [8]]))
setup = types.SimpleNamespace(data=types.SimpleNamespace(query_texts=[f"q{i}" for i in range(6)],
                                                         doc_texts=[f"d{i}" for i in range(9)]),
                              pipe=types.SimpleNamespace(examples=ex, positives={0: np.array([3]), 1: np.array([4, 7]), 2: np.array([0]), 5: np.array([8])}),
                              teacher_params={"queries": tq, "docs": td})
cols = st_peers.training_columns(setup, "margin_mse", 3, seed=0)
print(json.dumps({"cols": cols, "scores": (tq @ td.T).tolist()}))
"""


def test_margin_mse_negatives_are_teacher_ranked_below_every_positive_and_carry_its_margin():
  done = subprocess.run([sys.executable, "-c", _CHILD, str(ROOT)], capture_output=True, text=True, timeout=120)
  assert done.returncode == 0, done.stderr[-3000:]
  out = json.loads(done.stdout)
  cols, scores = out["cols"], out["scores"]
  positives = {0: [3], 1: [4, 7], 2: [0], 5: [8]}
  assert cols["query"] == ["q0", "q1", "q2", "q0", "q5"] and cols["positive"] == ["d3", "d4", "d0", "d3", "d8"]
  for q, pos, neg, margin in zip([0, 1, 2, 0, 5], [3, 4, 0, 3, 8], cols["negative"], cols["label"]):
    s, n = scores[q], int(neg[1:])
    floor = min(s[p] for p in positives[q])
    allowed = sorted((d for d in range(9) if s[d] < floor), key=lambda d: -s[d])[:3]
    assert n in allowed, (q, n, allowed)  # Never a positive, never at or above the lowest positive.
    assert abs(margin - (s[pos] - s[n])) < 1e-5


_MNRL_CHILD = r"""
import json, sys, types
import numpy as np
sys.path.insert(0, sys.argv[1] + "/benchmarks")
import st_peers
data = types.SimpleNamespace(query_texts=["q0", "q1"], doc_texts=["d0", "d1", "d2", "d3"])
ex = types.SimpleNamespace(query=np.array([1, 0]), docs=np.array([[2, 3], [0, 1]]))
setup = types.SimpleNamespace(data=data, pipe=types.SimpleNamespace(examples=ex), teacher_params={})
with_hard = st_peers.training_columns(setup, "mnrl", 10, 0)
ex.docs = ex.docs[:, :1]
print(json.dumps([with_hard, st_peers.training_columns(setup, "mnrl", 10, 0)]))
"""


def test_mnrl_peer_sees_the_same_hard_negatives_as_the_student():
  """With ``data.num_hard_negatives`` the MNRL peer trains on (query, positive, negative...) rows: each
  example's own documents, in order, so peer and student see the same data."""
  done = subprocess.run([sys.executable, "-c", _MNRL_CHILD, str(ROOT)], capture_output=True, text=True, timeout=120)
  assert done.returncode == 0, done.stderr[-3000:]
  with_hard, without = json.loads(done.stdout)
  assert with_hard == {"anchor": ["q1", "q0"], "positive": ["d2", "d0"], "negative_1": ["d3", "d1"]}
  assert without == {"anchor": ["q1", "q0"], "positive": ["d2", "d0"]}
