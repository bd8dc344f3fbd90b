"""distbp's version (floor 0: what model files and checkpoints record)."""

__version__ = "0.1.0"
