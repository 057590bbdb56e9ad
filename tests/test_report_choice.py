"""Model choice in a report: one chosen trial per database size, never one across sizes."""

from __future__ import annotations

from bench.report.choice import best_per_method, chosen_per_task, chosen_section, chosen_trials
from bench.report.data import MetricRecord, StudyRecord, TrialRecord


def _trial(number: int, method: str, val: float, test: float, **sampled) -> TrialRecord:
    return TrialRecord(
        run_id=f"run{number}",
        number=number,
        method=method,
        retriever=method,
        params={},
        sampled={"method": method, **sampled},
        metrics={"R@1": MetricRecord(test, 0.01, 0.001, 256)},
        extra={},
        tags={},
        val_metrics={"R@1": MetricRecord(val, 0.01, 0.001, 256)},
    )


def _record(trials: list[TrialRecord]) -> StudyRecord:
    return StudyRecord(
        name="t",
        run_id="r",
        experiment_id="0",
        tracking_uri="",
        params={"objective": "R@1", "direction": "maximize"},
        tags={},
        resolved={"methods": {"a": {}, "b": {}}},
        trials=trials,
    )


def _size_grid() -> list[TrialRecord]:
    """Two methods at two database sizes; at the small one both beat both at the large one."""
    return [
        _trial(0, "a", 0.10, 0.11, **{"dataset.n_total": 65536}),
        _trial(1, "b", 0.20, 0.19, **{"dataset.n_total": 65536}),
        _trial(2, "a", 0.60, 0.58, **{"dataset.n_total": 1024}),
        _trial(3, "b", 0.50, 0.52, **{"dataset.n_total": 1024}),
    ]


def test_a_grid_over_database_size_chooses_within_each_size():
    # at the small N every method beats every method at the large N: choosing across sizes
    # would pick "a at 1024" whatever the methods do at 65536
    trials = _size_grid()
    record = _record(trials)
    chosen = chosen_per_task(record)
    assert [(task, t.number) for task, t in chosen.items()] == [
        ((("dataset.n_total", "65536"),), 1),
        ((("dataset.n_total", "1024"),), 2),
    ]
    assert chosen_trials(record) == {1, 2}
    text = chosen_section(record)
    assert text.startswith("Chosen trial per task (best R@1 on the validation queries at each value of")
    assert "- dataset.n_total=65536: **#1 b dataset.n_total=65536** with 0.2000 there" in text
    assert "- dataset.n_total=1024: **#2 a dataset.n_total=1024** with 0.6000 there" in text


def test_without_a_task_axis_one_trial_is_chosen_on_validation_not_test():
    trials = [_trial(0, "a", 0.30, 0.90), _trial(1, "b", 0.40, 0.10), _trial(2, "a", 0.40, 0.95)]
    record = _record(trials)
    assert chosen_trials(record) == {1}  # best validation value; of equal ones the first
    text = chosen_section(record)
    assert text.startswith("Chosen trial (best R@1 on the validation queries): **#1 b** with 0.4000 there")
    assert "`bench search --run run1 IMAGE...`." in text


def test_no_scored_trial_says_so():
    assert chosen_section(_record([])) == "No finished trial has the objective metric."


def test_per_method_sections_read_the_largest_database_of_a_size_grid():
    trials = _size_grid()
    assert [t.number for t in best_per_method(_record(trials))] == [1, 0]  # best first, all at 65,536
    # without a size grid: each method's best trial over the whole study
    plain = [_trial(0, "a", 0.1, 0.1), _trial(1, "a", 0.3, 0.3), _trial(2, "b", 0.2, 0.2)]
    assert [t.number for t in best_per_method(_record(plain))] == [1, 2]
