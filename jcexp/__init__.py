"""jcexp: joint compression experiments (SparseGPT -> GPTQ -> lm-eval -> retention metrics)."""

__version__ = "0.1.0"
