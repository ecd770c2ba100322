"""Inference shared by training and evaluation: encoding (cached, split across processes), exact and
ScaNN search, BM25."""
