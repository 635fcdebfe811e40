"""mi-bench: a benchmarking suite for model-inversion defenses."""

__version__ = "0.2.0"
