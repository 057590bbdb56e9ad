"""The seconds a build's frozen-encoder feature extraction cost, whether or not it ran now.

The feature cache (vitdsi.features.feature_cache) makes a trial's build time depend on what ran
before it: the first build of an image set extracts its features, every later one reads them. An
`ExtractionTime` is handed through a build and collects, per image set it used, what extracting
it costs from cold (`charged`: the seconds recorded when its cache entry was built, or measured
now on a miss or without a cache) and the seconds actually spent extracting in this build
(`spent`). Build wall seconds - `spent` + `charged` is then what the build would take from cold,
the same in every trial that uses the same image sets.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class ExtractionTime:
    """Extraction seconds of one build, summed over the image sets it used."""

    charged: float = 0.0  # what extracting them costs from cold
    spent: float = 0.0  # seconds spent extracting (or waiting for another worker to) in this build
    unknown: int = 0  # image sets read from cache entries that recorded no build seconds

    def measured(self, seconds: float) -> None:
        """An image set extracted now, in `seconds`."""
        self.charged += seconds
        self.spent += seconds

    def read(self, recorded: float | None, waited: float = 0.0) -> None:
        """An image set read from the cache: `recorded`, the seconds its entry's build took (None:
        the entry predates that record), after `waited` seconds for another worker to build it."""
        if recorded is None:
            self.unknown += 1
        else:
            self.charged += float(recorded)
        self.spent += waited

    def record(self) -> dict[str, float]:
        """What a training record or `Retriever.build_info` logs: `extraction_s` (charged),
        `extraction_spent_s` and `extraction_unknown`."""
        return {
            "extraction_s": self.charged,
            "extraction_spent_s": self.spent,
            "extraction_unknown": float(self.unknown),
        }
