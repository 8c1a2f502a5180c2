"""attnres: Attention Residuals (Kimi Team, arXiv 2603.15031) in PyTorch."""

__version__ = "0.1.0"
