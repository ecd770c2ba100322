#!/bin/bash
set -x
cd /work/snap2
R=/work/main/runs
ARGS="init=minilm-l6,layers=0,corpus=10000,n_test=1000,n_dev=500,steps=300,dev_every=100,rerank_k=20"
until grep -q '"step": 300, "eval/mrr@10"' $R/ce10k_cls/metrics.jsonl 2>/dev/null; do sleep 15; done
sleep 5
pkill -f "workdir /work/main/runs/ce10k_cls" ; sleep 5
date
.venv/bin/python -m edistill.main --config configs/cross_encoder.py:head=dual,$ARGS --workdir $R/ce10k_dual --config.eval.at_end=False > /work/main/logs/ce_dual.log 2>&1
date
.venv/bin/python -m edistill.main --config configs/cross_encoder.py:head=dual,$ARGS --workdir $R/ce10k_dual --mode eval --config.cross_encoder.rerank_k=100 > /work/main/logs/ce_dual_eval.log 2>&1
date
.venv/bin/python -m edistill.main --config configs/cross_encoder.py:head=cls,$ARGS --workdir $R/ce10k_cls --mode eval --config.cross_encoder.rerank_k=100 > /work/main/logs/ce_cls_eval.log 2>&1
date
