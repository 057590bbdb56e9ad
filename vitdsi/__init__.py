"""vitdsi: a Vision Transformer Differentiable Search Index for image retrieval, and its baselines.

Follows "Vision Transformer Memory as a Differentiable Search Index for Image Retrieval"
(Di Stefano) and "Transformer Memory as a Differentiable Search Index" (Tay et al., 2022).
The library has no CLI, Optuna or MLflow code: those live in the `bench` harness.
"""

__version__ = "0.1.0"
