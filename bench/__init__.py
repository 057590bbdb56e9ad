"""bench: the harness around the `vitdsi` library (docs/design.md, "Optuna and MLflow").

A study YAML (bench.config) becomes one Optuna study (bench.study); each trial loads a
dataset and its split, builds and queries a retriever and scores it (bench.trial), and is
logged as a nested MLflow run (bench.tracking). The `bench` command (bench.cli) runs,
lists, browses and queries them. The library never imports this package.
"""

__all__ = ["__version__"]

__version__ = "0.1.0"
