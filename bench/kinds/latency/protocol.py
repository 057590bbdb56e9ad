"""A latency trial's data under each protocol: N indexed images and a fixed number of queries.

Under `class` (`class_trial_data`) more source images, never indexed, are the train queries, the
images `add` is timed with (the split's validation part) and the timed test queries. Under
`instance` (`instance_trial_data`) queries are views of indexed images, so their count must not
grow with N: the test and validation views are of seeded samples of `n_queries` indexed images
(the protocol's `queries`), the train views of `train_queries / train_views` indexed images (its
`trained_images`), and the images `add` is timed with are still held-out source images: the class
split's test part, which the protocol keeps as `SplitSets.held_out`."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from bench.config.errors import StudyConfigError

if TYPE_CHECKING:
    from bench.config.resolved import DataConfig


def class_trial_data(settings: dict[str, Any], data: DataConfig) -> DataConfig:
    """N indexed, then train queries, add images and test queries held out, in that order."""
    n = data.n_total
    parts = (settings.get("train_queries", 0), settings.get("add_images", 0), settings["n_queries"])
    held = sum(parts)
    return data.replace(
        n_total=n + held, split_ratio=n / (n + held), query_fractions=tuple(p / held for p in parts)
    )


def instance_trial_data(settings: dict[str, Any], data: DataConfig) -> DataConfig:
    """N indexed and `add_images` held out (at least one: a split needs a test part) as the class
    split's test part; the instance options sample `n_queries` queries and the trained images."""
    n = data.n_total
    options = data.protocol_options()
    n_queries, train_queries = settings["n_queries"], settings.get("train_queries", 0)
    if n_queries > n:
        raise StudyConfigError(
            f"field `latency.n_queries`: {n_queries} test views under the instance protocol are views of "
            f"distinct indexed images, but N = {n} (dataset.n_total); lower n_queries or raise N"
        )
    if train_queries and (options.train_views == 0 or train_queries % options.train_views):
        raise StudyConfigError(
            f"field `latency.train_queries`: {train_queries} train views under the instance protocol are "
            f"`dataset.instance.train_views` = {options.train_views} views of each of a number of indexed "
            "images; give a multiple of train_views"
        )
    trained = train_queries // options.train_views if train_queries else 0
    if trained > n:
        raise StudyConfigError(
            f"field `latency.train_queries`: {train_queries} train views need {trained} indexed images with "
            f"train views, but N = {n} (dataset.n_total)"
        )
    held = max(settings.get("add_images", 0), 1)
    block = {**data.protocol_args.get("instance", {}), "queries": n_queries, "trained_images": trained}
    return data.replace(
        n_total=n + held,
        split_ratio=n / (n + held),
        query_fractions=(0.0, 0.0, 1.0),
        protocol_args={**data.protocol_args, "instance": block},
    )
