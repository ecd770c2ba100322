"""Exports loaded by the PyTorch libraries their users run (make test-interop; skipped by make test)."""
