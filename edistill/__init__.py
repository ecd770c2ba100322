"""edistill: EmbedDistill in JAX/Flax (README.md)."""
import os

# transformers warns "PyTorch was not found. Models won't be available" on import; edistill uses only
# its tokenizers and formats, so the advice is noise on every command (torch is an optional extra).
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
