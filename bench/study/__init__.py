"""Running a study with Optuna: resumable, fault tolerant, shareable by several workers.

worker (the loop of `bench run`), objective (one trial), queue (a grid as enqueued trials),
samplers (TPE / random seeded per trial), storage (RDB with heartbeats, the claim lock) and
summary (what a run hands back). docs/design.md, "Optuna and MLflow", has the guarantees.
"""

from bench.study.storage import make_storage
from bench.study.summary import RunOutcome, describe, trials_table
from bench.study.worker import RunOptions, StudyMismatchError, run

__all__ = [
    "RunOptions",
    "RunOutcome",
    "StudyMismatchError",
    "describe",
    "make_storage",
    "run",
    "trials_table",
]
