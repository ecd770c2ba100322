"""Device mesh and shardings from configuration (MaxText style: sharding is config, not code).

``mesh_shape`` maps axis names to sizes, e.g. ``{"data": -1, "model": 1}``; ``-1`` takes the rest of
the devices. Batches shard their leading axis over ``data``. Parameters follow ordered logical
rules: the first rule whose regex matches a parameter path decides which tensor axis is split over
``model``; a parameter matching no rule (or whose axis is not divisible) is replicated.
"""
from __future__ import annotations

import re
from typing import Mapping, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

# (path regex, tensor axis sharded over "model"). Megatron-style: qkv and mlp_in split their outputs,
# out and mlp_out their inputs, so each layer needs one reduction.
DEFAULT_RULES: tuple[tuple[str, int], ...] = (
    (r".*/attention/qkv/kernel$", 1),
    (r".*/mlp_in/kernel$", 1),
    (r".*/attention/out/kernel$", 0),
    (r".*/mlp_out/kernel$", 0),
)


def axes(mesh_cfg: Mapping) -> dict[str, int]:
  """The axis sizes of a config's ``mesh`` section (every entry but ``rules``)."""
  return {k: int(v) for k, v in mesh_cfg.items() if k != "rules"}


def rules(mesh_cfg: Mapping) -> tuple[tuple[str, int], ...]:
  """The ordered (path regex, tensor axis) rules of a config's ``mesh`` section; each is checked."""
  out = []
  for rule in mesh_cfg.get("rules", DEFAULT_RULES):
    if len(rule) != 2 or not isinstance(rule[0], str) or not isinstance(rule[1], int):
      raise ValueError(f"config.mesh.rules entry {rule!r}: expected (path regex, tensor axis int).")
    try:
      re.compile(rule[0])
    except re.error as e:
      raise ValueError(f"config.mesh.rules entry {rule!r}: bad regex ({e}).") from None
    out.append((rule[0], rule[1]))
  return tuple(out)


def make_mesh(mesh_shape: Mapping[str, int], devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A mesh over ``devices`` (default all) with the named axes; one -1 entry fills the rest."""
  devices = list(devices if devices is not None else jax.devices())
  names, sizes = list(mesh_shape), [int(v) for v in mesh_shape.values()]
  if sizes.count(-1) > 1:
    raise ValueError(f"mesh_shape {dict(mesh_shape)}: at most one axis may be -1.")
  known = int(np.prod([s for s in sizes if s != -1]))
  if -1 in sizes:
    if len(devices) % known:
      raise ValueError(f"mesh_shape {dict(mesh_shape)} does not divide {len(devices)} devices.")
    sizes[sizes.index(-1)] = len(devices) // known
  if int(np.prod(sizes)) != len(devices):
    raise ValueError(f"mesh_shape {dict(zip(names, sizes))} needs {int(np.prod(sizes))} devices, "
                     f"have {len(devices)}.")
  return Mesh(np.asarray(devices).reshape(sizes), names)


def local_mesh() -> Mesh:
  """A 1-D ``data`` mesh over this process's own devices: what per-host work (encoding a process's
  rows, exact search) splits its batches over."""
  return Mesh(np.asarray(jax.local_devices()), ("data",))


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) axis over ``data``, the rest replicated."""
  return NamedSharding(mesh, P("data"))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def param_spec(path: str, shape: tuple[int, ...], mesh: Mesh,
               rules: Sequence[tuple[str, int]] = DEFAULT_RULES) -> P:
  model = mesh.shape.get("model", 1)
  if model > 1:
    for pattern, axis in rules:
      if re.fullmatch(pattern, path) and len(shape) > axis and shape[axis] % model == 0:
        spec = [None] * len(shape)
        spec[axis] = "model"
        return P(*spec)
  return P()


def path_str(path) -> str:
  """A jax key path as "a/b/c" (dict keys, attribute names and indices alike)."""
  parts = []
  for k in path:
    parts.append(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))))
  return "/".join(parts)


def tree_shardings(tree, mesh: Mesh, rules: Sequence[tuple[str, int]] = DEFAULT_RULES):
  """NamedShardings for every leaf of a pytree (params, optimizer state, train state).

  Optimizer moments mirror the param tree, so their paths end like the param's and follow the
  same rules.
  """
  return jax.tree_util.tree_map_with_path(
      lambda path, leaf: NamedSharding(mesh, param_spec(path_str(path), tuple(np.shape(leaf)), mesh, rules)), tree)
