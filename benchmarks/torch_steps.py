"""steps.py's train steps in PyTorch, as a PyTorch user writes them: transformers' ``BertModel`` /
``MPNetModel`` (SDPA attention where transformers has it: BERT; MPNet's is its own eager code), the
same heads and loss formulas (edistill.losses), AdamW with edistill's decay mask and global-norm
clipping; bf16 autocast over the encoder with heads and losses in float32 (as edistill computes
them), fused AdamW on CUDA, ``torch.compile`` on request. The weights are copied from edistill's
random init (``hf_import.hf_tensors``), so both frameworks start from the same parameters.

Imports torch and NumPy only at module level (train_speed.py measures a torch-only process);
building a model from an edistill config imports edistill's hf_import (jax) when called.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import GRAD_CLIP, LR, TEMPERATURE, WEIGHT_DECAY  # noqa: E402

MASKED = -1e9  # edistill.losses._MASKED


# ------------------------------------------------------------------------------------------- losses
def label_loss(scores, positive_col, exclude, temperature: float = TEMPERATURE):
  """edistill.losses.label_loss: softmax CE over the columns not in ``exclude`` [B, B'] bool (the
  target always counts), mean over rows."""
  valid = ~exclude | F.one_hot(positive_col, scores.shape[1]).bool()
  return F.cross_entropy(torch.where(valid, scores / temperature, MASKED), positive_col)


def score_distillation(s, t, exclude, student_temperature: float = TEMPERATURE,
                       teacher_temperature: float = TEMPERATURE):
  """edistill.losses.score_distillation, softmax_ce: -sum_j p_t log p_s over the columns not in
  ``exclude``, mean over rows."""
  valid = ~exclude
  log_ps = torch.where(valid, s / student_temperature, MASKED).log_softmax(-1)
  pt = torch.where(valid, t / teacher_temperature, MASKED).softmax(-1)
  return -torch.where(valid, pt * log_ps, 0.0).sum(-1).mean()


def qemb_terms(q_p, t_q, t_d, negative_mask) -> dict[str, Any]:
  """The qemb row's loss terms from projected student queries ``q_p`` [B, Dt], the teacher's query
  rows ``t_q`` [B, Dt] and document rows ``t_d`` [B * C, Dt] (column i * C: query i's positive),
  ``negative_mask`` [B, B * C]: label, score distillation (softmax_ce) and query-embedding l2."""
  b, n = negative_mask.shape
  s, t = q_p @ t_d.T, t_q @ t_d.T
  positive_col = torch.arange(b, device=s.device) * (n // b)
  return {"label": label_loss(s, positive_col, negative_mask), "score": score_distillation(s, t, negative_mask),
          "query_emb": torch.sqrt(((t_q - q_p) ** 2).sum(-1) + 1e-12).mean()}  # l2, not squared.


def mean_pool(states, mask, floor: float = 1e-9):
  """edistill's masked mean over tokens, [N, L, H] -> [N, H] float32, the token count floored at
  ``floor`` (encoder.pool: 1e-9; the cross-encoder's masked_mean: 1, so a row with none gives 0)."""
  m = mask.unsqueeze(-1).float()
  return (states.float() * m).sum(1) / m.sum(1).clamp(min=floor)


def adamw(named: list[tuple[str, torch.nn.Parameter]], fused: bool | None = None) -> torch.optim.AdamW:
  """AdamW as edistill's make_optimizer: weight decay on matrices except embedding tables. ``fused``:
  True the fused kernel, False the foreach one, None torch's default for the device."""
  decay = [p for k, p in named if p.ndim >= 2 and "embedding" not in k]
  rest = [p for k, p in named if not (p.ndim >= 2 and "embedding" not in k)]
  impl = {} if fused is None else {"fused": fused, "foreach": not fused}
  return torch.optim.AdamW([{"params": decay, "weight_decay": WEIGHT_DECAY}, {"params": rest, "weight_decay": 0.0}],
                           lr=LR, betas=(0.9, 0.999), eps=1e-8, **impl)


# ------------------------------------------------------------------------------------------- models
def encoder(cfg, params, device) -> torch.nn.Module:
  """transformers' model of ``cfg`` (an edistill ``TransformerConfig``) on ``device`` holding ``params``
  (an edistill encoder param tree), in training mode; SDPA attention for BERT."""
  import transformers

  from edistill.models import arch as arch_lib, hf_import

  cls = getattr(transformers, arch_lib.get(cfg.arch).hf_class)
  config = cls.config_class(**hf_import.config_to_hf(cfg))
  if cfg.arch == "bert":
    config._attn_implementation = "sdpa"
  with torch.device(device):
    model = cls(config, add_pooling_layer=False)
  tensors = {k: torch.tensor(v) for k, v in hf_import.hf_tensors(params, cfg, pooler=False).items()}
  missing, unexpected = model.load_state_dict(tensors, strict=False)
  left = [k for k in missing if not k.endswith(("position_ids", "token_type_ids"))]  # Buffers.
  if left or unexpected:
    raise ValueError(f"edistill's params do not fill the {cls.__name__}: missing {left}, unexpected {unexpected}.")
  return model.train()


def _linear(params, device) -> torch.nn.Linear:
  """An edistill {kernel [in, out], bias [out]} as a float32 ``nn.Linear``."""
  kernel = torch.tensor(np.asarray(params["kernel"], np.float32))
  layer = torch.nn.Linear(*kernel.shape, device=device)
  with torch.no_grad():
    layer.weight.copy_(kernel.T)
    layer.bias.copy_(torch.tensor(np.asarray(params["bias"], np.float32)))
  return layer


class TorchStep:
  """One ``steps.Workload``'s train step on ``device`` from edistill's ``params`` and NumPy ``batch``:
  ``step()`` runs one (no host sync) and returns the loss tensor; ``loss()`` is the loss alone."""

  def __init__(self, w, params, batch: dict[str, np.ndarray], device: str = "cpu", compile: bool = False,
               fused: bool | None = None):
    self.w, self.device = w, torch.device(device)
    self.autocast = w.dtype == "bfloat16"
    tower = params["query_tower"] if w.kind == "qemb" else params["encoder"]
    self.encoder = encoder(w.config, tower, self.device)
    head = params.get("query_projection" if w.kind == "qemb" else "score")
    self.head = _linear(head, self.device) if head is not None else None
    self.batch = {k: torch.from_numpy(np.ascontiguousarray(v)).to(self.device) for k, v in batch.items()}
    self.batch = {k: v.long() if v.dtype == torch.int32 else v for k, v in self.batch.items()}
    named = [*self.encoder.named_parameters(), *(("head." + k, v) for k, v in
                                                 (self.head.named_parameters() if self.head else ()))]
    self.params = [p for _, p in named]
    self.opt = adamw(named, fused=self.device.type == "cuda" if fused is None else fused)
    self.loss_fn = torch.compile(self._loss) if compile else self._loss

  def _states(self, ids, mask, token_types=None):
    kw = {} if token_types is None else {"token_type_ids": token_types}
    with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.autocast):
      return self.encoder(input_ids=ids, attention_mask=mask, **kw).last_hidden_state

  def _loss(self, batch):
    if self.w.kind == "qemb":
      states = self._states(batch["query_input_ids"], batch["query_attention_mask"])
      q_p = self.head(F.normalize(mean_pool(states, batch["query_attention_mask"]), dim=-1, eps=1e-12))
      t_d = batch["teacher_doc"].reshape(-1, batch["teacher_doc"].shape[-1])
      terms = qemb_terms(q_p, batch["teacher_query"], t_d, batch["negative_mask"])
      return sum(terms.values())
    b, k, length = batch["input_ids"].shape
    flat = {key: v.reshape(b * k, length) for key, v in batch.items() if v.ndim == 3}
    states = self._states(flat["input_ids"], flat["attention_mask"], flat.get("token_type_ids"))
    if self.w.head == "cls":
      scores = self.head(states[:, 0].float())[:, 0]
    else:
      q = F.normalize(mean_pool(states, flat["query_mask"], 1.0), dim=-1, eps=1e-12)
      d = F.normalize(mean_pool(states, flat["doc_mask"], 1.0), dim=-1, eps=1e-12)
      scores = (q * d).sum(-1)
    return label_loss(scores.reshape(b, k), batch["positive_col"], ~batch["candidate_mask"])

  def loss(self):
    return self.loss_fn(self.batch)

  def step(self):
    loss = self.loss_fn(self.batch)
    self.opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(self.params, GRAD_CLIP, foreach=True)
    self.opt.step()
    return loss

  def sync(self):
    if self.device.type == "cuda":
      torch.cuda.synchronize(self.device)
