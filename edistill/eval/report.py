"""Results as files and tables: paired intervals of each model's share of the teacher, Markdown
tables (one split, or one model over several domains) and the workdir's results files."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Sequence

from absl import logging
from etils import epath

from edistill import cache
from edistill.eval import metrics as metrics_lib

METRICS = ("mrr@10", "recall@10", "recall@100", "ndcg@10")
# Row entry {query id: reciprocal rank within the top 10} of exact search (BM25: its own ranking), which
# ``teacher_intervals`` turns into a bootstrap interval of each model's share of the teacher's MRR@10.
PER_QUERY = "per_query/mrr@10"
# Row entry {query id: {doc id: score}}: the ranking a model returned (exact search; BM25's own), written
# as a TREC run file beside the results (``write_results``), for trec_eval / ranx / a user's own tools.
RUN = "run"


def dataset_name(source: str, path: str = "", corpus_size: int = 0) -> str:
  """What a workdir's results files call a ``config.data`` (``results_<dataset>_<split>``): an offline
  benchmark by source and corpus slice (``wordnet_gcide-10000``; the whole pool: ``debian``), a
  directory by format and folder (``beir-scifact``), so evaluating another dataset writes other files."""
  from edistill.data import benchmarks
  if path and source not in benchmarks.BENCHMARKS:  # An offline benchmark is built here: a path is unused.
    return f"{source}-{Path(str(path).rstrip('/')).name}"
  return f"{source}-{corpus_size}" if corpus_size else source


def data_name(data) -> str:
  """``dataset_name`` of a ``config.data`` (a ConfigDict, or the dict a workdir's config.json holds)."""
  return dataset_name(data["source"], data.get("path", ""), data.get("corpus_size", 0))


def result_file(workdir: str | os.PathLike, split: str, prefix: str = "results", ext: str = "json") -> Path:
  """``<prefix>_<dataset>_<split>.<ext>`` of the workdir's own dataset (its ``config.json``), or a file
  written before results named the dataset (``<prefix>_<split>.<ext>``)."""
  workdir = Path(workdir)
  try:
    data = json.loads((workdir / "config.json").read_text())["data"]
  except FileNotFoundError:
    named = None
  else:
    named = workdir / f"{prefix}_{data_name(data)}_{split}.{ext}"
  legacy = workdir / f"{prefix}_{split}.{ext}"
  if named is not None and (named.is_file() or not legacy.is_file()):
    return named
  if legacy.is_file():
    return legacy
  raise FileNotFoundError(f"{workdir}: no config.json to name its dataset's {prefix} files by, and no {legacy.name}.")


def split_runs(rows: dict[str, dict[str, Any]]) -> tuple[dict[str, dict[str, Any]], dict[str, dict]]:
  """(rows without their ``RUN`` entries, {model: run}) for rows that carry one."""
  runs = {name: r[RUN] for name, r in rows.items() if RUN in r}
  return {name: {k: v for k, v in r.items() if k != RUN} for name, r in rows.items()}, runs


def trec_run(run: dict[str, dict[str, float]], tag: str) -> str:
  """TREC run format: ``qid Q0 docid rank score tag`` per line, each query's documents best first."""
  lines = []
  for qid in sorted(run):
    ranked = sorted(run[qid].items(), key=lambda kv: (-kv[1], kv[0]))
    lines += [f"{qid} Q0 {doc} {rank} {score:.6f} {tag}" for rank, (doc, score) in enumerate(ranked, 1)]
  return "\n".join(lines) + ("\n" if lines else "")


def teacher_intervals(rows: dict[str, dict[str, Any]], teacher: str = "teacher", level: float = 0.95
                      ) -> tuple[dict[str, dict[str, float]], dict[str, dict[str, float]]]:
  """Splits the ``PER_QUERY`` entries off ``rows`` and adds, to every other model's row, the paired
  bootstrap interval (``level``, over the test queries) of its MRR@10 as % of the teacher's:
  ``teacher_pct_lo`` / ``teacher_pct_hi``. Returns (rows of floats, {model: {query id: RR@10}})."""
  per_query = {name: r[PER_QUERY] for name, r in rows.items() if PER_QUERY in r}
  out = {name: {k: v for k, v in r.items() if k != PER_QUERY} for name, r in rows.items()}
  ref = per_query.get(teacher)
  if ref and any(ref.values()):
    for name, values in per_query.items():
      if name != teacher:
        lo, hi = metrics_lib.bootstrap_ratio_ci(values, ref, level=level)
        out[name].update(teacher_pct_lo=100 * lo, teacher_pct_hi=100 * hi)
  return out, per_query


def results_table(rows: dict[str, dict[str, float]], teacher: str | None = "teacher",
                  metrics: Sequence[str] = METRICS) -> str:
  """Markdown: one row per model; % of the teacher's MRR@10; params and query latency when known."""
  head = ["model", *metrics]
  ref = rows.get(teacher, {}).get("mrr@10") if teacher else None
  if ref:
    head.append(f"% {teacher} MRR@10")
  ci = bool(ref) and any("teacher_pct_lo" in r for r in rows.values())
  if ci:
    head.append("95 % interval")  # Paired bootstrap over the queries (teacher_intervals).
  extra = [c for c in ("scann/recall@10_vs_exact", "params_m", "query_ms") if any(c in r for r in rows.values())]
  head += extra
  lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  for name, r in rows.items():
    cells = [name] + [f"{r[m]:.4f}" if m in r else "" for m in metrics]
    if ref:
      cells.append(f"{100 * r['mrr@10'] / ref:.1f}" if "mrr@10" in r else "")
    if ci:
      cells.append(f"{r['teacher_pct_lo']:.1f}-{r['teacher_pct_hi']:.1f}" if "teacher_pct_lo" in r else "")
    cells += [f"{r[c]:.3f}" if c in r and c != "params_m" else (f"{r[c]:.1f}M" if c in r else "") for c in extra]
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines) + "\n"


def write_results(workdir: str | os.PathLike, split: str, rows: dict[str, dict[str, float]], header: str = "",
                  per_query: dict[str, dict[str, float]] | None = None, metrics: Sequence[str] = METRICS,
                  teacher: str = "teacher", runs: dict[str, dict] | None = None) -> Path:
  """``results_<split>.json`` and ``results_<split>.md`` in the workdir (atomic writes; ``split``: the
  name the callers give, ``<dataset>_<split>``), ``per_query_<split>.json`` ({model: {query id: RR@10}}) when ``per_query`` is given and
  ``run_<split>_<model>.trec`` for each of ``runs`` ({model: {query id: {doc id: score}}}); the
  table's shares are of the ``teacher`` row's MRR@10."""
  workdir = epath.Path(workdir)  # Local or gs://.
  files = [(f"results_{split}.json", json.dumps(rows, indent=2)),
           (f"results_{split}.md", header + results_table(rows, teacher=teacher, metrics=metrics))]
  if per_query:
    files.append((f"per_query_{split}.json", json.dumps(per_query, indent=1, sort_keys=True)))
  files += [(f"run_{split}_{model}.trec", trec_run(run, f"edistill-{model}")) for model, run in (runs or {}).items()]
  for name, text in files:
    cache.write_text_atomic(workdir / name, text)
  logging.info("Results written to %s", workdir / f"results_{split}.md")
  return workdir / f"results_{split}.md"


def domains_table(rows_by_domain: dict[str, dict[str, dict[str, float]]], trained_on=None,
                  teacher: str = "teacher") -> str:
  """Markdown over domains: per (domain, model) MRR@10, R@10 and the share of that domain's teacher
  with its 95 % interval; each model's row is the same model evaluated on every domain."""
  where = (f" (trained on {trained_on.source}"
           + (f" at {trained_on.corpus_size} documents" if trained_on.get("corpus_size") else "") + ")"
           if trained_on is not None else "")
  lines = [f"# Cross-domain evaluation{where}", "",
           "Test splits; % teacher = MRR@10 as a share of the teacher's on the same domain, with its paired "
           "bootstrap 95 % interval over that domain's queries.", "",
           "| domain | queries | model | mrr@10 | recall@10 | % teacher MRR@10 | 95 % interval |",
           "|---|---|---|---|---|---|---|"]
  for domain, rows in rows_by_domain.items():
    ref = rows.get(teacher, {}).get("mrr@10")
    for name, r in rows.items():
      share = f"{100 * r['mrr@10'] / ref:.1f}" if ref and "mrr@10" in r else ""
      ci = f"{r['teacher_pct_lo']:.1f}-{r['teacher_pct_hi']:.1f}" if "teacher_pct_lo" in r else ""
      cells = [f"{r[m]:.4f}" if m in r else "" for m in ("mrr@10", "recall@10")]
      lines.append(f"| {domain} | {int(r.get('num_queries', 0))} | {name} | {' | '.join(cells)} | {share} | {ci} |")
  return "\n".join(lines) + "\n"
