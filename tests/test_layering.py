"""The package's layering (README, ARCHITECTURE): who may import whom, and no import cycles.

Layers, top to bottom; a module may import its own layer and those below, never above:
  entry     main.py, config_lib.py, any ``__main__.py`` (command lines: they may import anything)
  recipes   recipes/
  train     train/
  objective objective.py, losses.py, teachers.py
  eval      eval/
  retrieval retrieval/
  models    models/
  data      data/
  base      cache.py, mesh.py, checkpoint.py, distributed.py, host.py, registry.py, xla_options.py
Besides, training never imports evaluation (a recipe hands the loop its evaluators).
Every ``import`` counts, also those inside functions: a lazy import is still a dependency.
"""
import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "edistill"
LAYERS = ("base", "data", "models", "retrieval", "eval", "objective", "train", "recipes", "entry")
BASE = {"", "cache", "mesh", "checkpoint", "distributed", "host", "registry", "xla_options"}  # "": edistill/__init__.py
OBJECTIVE = {"objective", "losses", "teachers"}
ENTRY = {"main", "config_lib"}
FORBIDDEN = {("train", "eval")}  # (importer's layer, imported's layer) though the second is lower.


def _name(path: Path) -> str:
  parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
  return ".".join(parts[:-1] if parts[-1] == "__init__" else parts).removeprefix("edistill").lstrip(".")


def graph() -> dict[str, set[str]]:
  """{module: the edistill modules it imports} (names without the ``edistill.`` prefix)."""
  files = {_name(p): p for p in ROOT.rglob("*.py")}
  out = {}
  for mod, path in files.items():
    package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
    deps = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
      if isinstance(node, ast.Import):
        deps |= {a.name for a in node.names if a.name.split(".")[0] == "edistill"}
      elif isinstance(node, ast.ImportFrom):
        base = node.module or ""
        if node.level:
          up = package.split(".")[:len(package.split(".")) - node.level + 1] if package else []
          base = ".".join(["edistill", *filter(None, up), *filter(None, [base])])
        if base.split(".")[0] != "edistill":
          continue
        for a in node.names:  # ``from pkg import module`` depends on the module, else on pkg.
          full = f"{base}.{a.name}".removeprefix("edistill.")
          deps.add(full if full in files else base)
    out[mod] = {d.removeprefix("edistill").lstrip(".") for d in deps} - {mod, ""}
  return out


def layer(mod: str) -> str:
  head = mod.split(".")[0]
  if mod in ENTRY or mod.endswith("__main__"):
    return "entry"
  if head in BASE:
    return "base"
  if head in OBJECTIVE:
    return "objective"
  if head in ("data", "models", "retrieval", "eval", "train", "recipes"):
    return head
  raise AssertionError(f"edistill.{mod} is in no layer: add it to tests/test_layering.py and the README.")


def upward(g: dict[str, set[str]]) -> set[tuple[str, str]]:
  """(importer, imported) for each import of a higher layer, or of a lower one FORBIDDEN names."""
  return {(m, d) for m, deps in g.items() for d in deps
          if LAYERS.index(layer(d)) > LAYERS.index(layer(m)) or (layer(m), layer(d)) in FORBIDDEN}


def cycles(g: dict[str, set[str]]) -> set[tuple[str, ...]]:
  """Each elementary cycle once, as its modules sorted (Tarjan's strongly connected components)."""
  index, low, stack, on, out = {}, {}, [], set(), set()

  def visit(v):
    index[v] = low[v] = len(index)
    stack.append(v)
    on.add(v)
    for w in g.get(v, ()):
      if w not in index:
        visit(w)
        low[v] = min(low[v], low[w])
      elif w in on:
        low[v] = min(low[v], index[w])
    if low[v] == index[v]:
      comp = []
      while True:
        w = stack.pop()
        on.discard(w)
        comp.append(w)
        if w == v:
          break
      if len(comp) > 1:
        out.add(tuple(sorted(comp)))

  for v in sorted(g):
    if v not in index:
      visit(v)
  return out


def test_every_module_is_in_a_layer():
  for mod in graph():
    layer(mod)


def test_no_module_imports_a_layer_above_its_own():
  assert upward(graph()) == set(), "imports across the layers (README, Architecture)"


def test_no_import_cycles():
  assert cycles(graph()) == set()


def test_the_checker_sees_upward_imports_and_cycles():
  g = {"data.x": {"models.y"}, "models.y": {"data.x"}, "cache": set(), "data.z": {"cache"},
       "train.t": {"eval.e", "models.y"}, "eval.e": set()}
  assert upward(g) == {("data.x", "models.y"), ("train.t", "eval.e")}
  assert cycles(g) == {("data.x", "models.y")}
  assert layer("data.benchmarks.__main__") == "entry" and layer("mesh") == "base"

