"""The frozen-encoder feature cache (vitdsi.features.feature_cache): a hit computes nothing, any
key change misses, two workers build one entry once, a corrupt entry is rebuilt with a warning,
and a hit reports the seconds its entry's build took."""

from __future__ import annotations

import json
import logging
import re
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from filelock import FileLock

from vitdsi.cache_folder import build_atomically
from vitdsi.errors import VitDSIError
from vitdsi.features.extraction import ExtractionTime
from vitdsi.features.feature_cache import MARKER, CacheKey, FeatureCache, _write, fingerprint_array

ROWS = np.arange(40 * 6, dtype=np.float32).reshape(40, 6)


class Encoder:
    """Yields ROWS in blocks of 16 and counts how often it was asked to."""

    def __init__(self, pause: float = 0.0) -> None:
        self.calls, self.pause = 0, pause  # pause: seconds each block takes

    def __call__(self):
        self.calls += 1
        for start in range(0, len(ROWS), 16):
            time.sleep(self.pause)
            yield ROWS[start : start + 16]


def _key(**change) -> CacheKey:
    parts = {
        "images": fingerprint_array(np.zeros((40, 3, 8, 8), np.uint8)),
        "encoder": "toy blocks[:2] @8px",
        "preprocessing": "imagenet mean/std",
        "views": "",
    }
    return CacheKey(**{**parts, **change})


def test_hit_computes_nothing_and_reads_a_memory_map(tmp_path):
    cache, enc = FeatureCache(tmp_path), Encoder()
    first = cache.get(_key(), enc, n=40)
    again = cache.get(_key(), enc, n=40)
    assert enc.calls == 1 and isinstance(again, np.memmap) and not again.flags.writeable
    np.testing.assert_array_equal(first, ROWS)
    np.testing.assert_array_equal(again, ROWS)
    [entry] = cache.entries()
    assert (
        entry.bytes >= ROWS.nbytes and entry.manifest["shape"] == [40, 6] and entry.manifest["key"]["encoder"]
    )


@pytest.mark.parametrize("part", ["images", "encoder", "preprocessing", "views"])
def test_any_key_part_that_changes_is_a_miss(tmp_path, part):
    cache, enc = FeatureCache(tmp_path), Encoder()
    cache.get(_key(), enc, n=40)
    other = _key(**{part: "something else"})
    assert other.digest() != _key().digest()
    cache.get(other, enc, n=40)
    assert enc.calls == 2 and len(cache.entries()) == 2


def test_changed_image_bytes_change_the_fingerprint():
    a = np.zeros((4, 3, 8, 8), np.uint8)
    b = a.copy()
    b[3, 2, 7, 7] = 1
    assert fingerprint_array(a) != fingerprint_array(b) != fingerprint_array(a.reshape(2, 2, 3, 8, 8))
    assert fingerprint_array(a) == fingerprint_array(a.copy())


@pytest.mark.parametrize("damage", ["truncate", "flip", "manifest", "seconds"])
def test_corrupt_entry_is_rebuilt_with_a_warning(tmp_path, caplog, damage):
    cache, enc = FeatureCache(tmp_path), Encoder()
    cache.get(_key(), enc, n=40)
    folder = cache.path(_key())
    data = folder / "features.npy"
    if damage == "truncate":
        data.write_bytes(data.read_bytes()[:-50])
    elif damage == "flip":
        raw = bytearray(data.read_bytes())
        raw[-1] ^= 0xFF
        data.write_bytes(bytes(raw))
    elif damage == "seconds":
        manifest = json.loads((folder / "manifest.json").read_text())
        (folder / "manifest.json").write_text(json.dumps({**manifest, "build_seconds": "fast"}))
    else:
        (folder / "manifest.json").write_text("{not json")
    with caplog.at_level(logging.WARNING):
        rebuilt = cache.get(_key(), enc, n=40)
    assert enc.calls == 2 and "is corrupt" in caplog.text and "rebuilding" in caplog.text
    np.testing.assert_array_equal(rebuilt, ROWS)


def test_two_workers_build_one_entry_once(tmp_path):
    """Two processes ask for the same missing entry at once: one computes it (slowly), the
    other waits on the lock and reads the finished entry."""
    log = tmp_path / "computed.log"
    script = textwrap.dedent(f"""
        import sys, time
        import numpy as np
        from vitdsi.features.feature_cache import CacheKey, FeatureCache
        def batches():
            with open({str(log)!r}, "a") as f:
                f.write("computed\\n")
            for i in range(4):
                time.sleep(0.3)
                yield np.full((5, 3), i, dtype=np.float32)
        cache = FeatureCache({str(tmp_path / "cache")!r})
        out = cache.get(CacheKey(images="x", encoder="slow"), batches, n=20)
        print(float(out.sum()))
    """)
    root = Path(__file__).resolve().parents[1]
    procs = [
        subprocess.Popen([sys.executable, "-c", script], cwd=root, stdout=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=120)[0].strip() for p in procs]
    assert [p.returncode for p in procs] == [0, 0]
    assert outs[0] == outs[1] == str(float(5 * 3 * (0 + 1 + 2 + 3)))
    assert log.read_text().count("computed") == 1
    assert not list((tmp_path / "cache").glob("*.tmp-*"))  # no half-built folder left behind


def test_wrong_row_count_leaves_nothing_behind(tmp_path):
    cache = FeatureCache(tmp_path)
    with pytest.raises(VitDSIError, match="gave 40 rows, 50 were asked for"):
        cache.get(_key(), Encoder(), n=50)
    assert cache.entries() == [] and not list(tmp_path.glob("*.tmp-*"))


def test_remove_by_prefix_and_all(tmp_path):
    cache, enc = FeatureCache(tmp_path), Encoder()
    for name in ("a", "b", "c"):
        cache.get(_key(encoder=name), enc, n=40)
    digest = _key(encoder="b").digest()
    assert [e.digest for e in cache.remove(digest[:10])] == [digest]
    assert len(cache.entries()) == 2
    with pytest.raises(VitDSIError, match="0 entries .* start with 'zzz'"):
        cache.remove("zzz")
    assert len(cache.remove()) == 2 and cache.entries() == []


def test_manifest_records_the_key_and_checksum(tmp_path):
    cache = FeatureCache(tmp_path)
    cache.get(_key(), Encoder(), n=40)
    manifest = json.loads((cache.path(_key()) / "manifest.json").read_text())
    assert manifest["key"] == _key().__dict__ and manifest["dtype"] == "<f4"
    assert manifest["checksum"] == fingerprint_array(ROWS)


def test_bench_cache_lists_and_removes(tmp_path):
    from typer.testing import CliRunner

    from bench.cli import app

    cache = FeatureCache(tmp_path)
    cache.get(_key(encoder="toy encoder"), Encoder(), n=40)
    digest = _key(encoder="toy encoder").digest()
    # the same encoder at another input size: the listing tells the two apart
    cache.get(_key(encoder="toy encoder", preprocessing="bilinear resize to 96 px"), Encoder(), n=40)

    def bench(*args):
        return CliRunner().invoke(app, ["cache", *args, "--dir", str(tmp_path)], env={"COLUMNS": "200"})

    listed = bench()
    assert listed.exit_code == 0 and "2 entries" in listed.output
    assert listed.output.count("toy encoder at 96 px") == 1 and listed.output.count("toy encoder") == 2
    assert digest[:12] in listed.output and "toy encoder" in listed.output and "40x6" in listed.output
    assert re.search(r"built in \d+\.\d s", listed.output)
    bad = bench("remove", "nope")
    assert bad.exit_code == 2 and "start with 'nope'" in bad.output
    assert bench("remove").exit_code != 0  # neither a digest nor --all
    gone = bench("remove", digest[:8])
    assert gone.exit_code == 0 and "removed 1 entries" in gone.output and len(cache.entries()) == 1
    assert bench("remove", "--all").exit_code == 0 and cache.entries() == []
    assert "no cached features" in bench("list").output


def test_a_hit_reports_the_seconds_its_entry_took_to_build(tmp_path):
    cache, enc = FeatureCache(tmp_path), Encoder(pause=0.03)  # three blocks: at least 0.09 s
    built, read = ExtractionTime(), ExtractionTime()
    cache.get(_key(), enc, n=40, clock=built)
    manifest = json.loads((cache.path(_key()) / MARKER).read_text())
    assert built.charged == built.spent == manifest["build_seconds"] >= 0.09
    assert manifest["threads"] >= 1 and built.unknown == 0
    cache.get(_key(), enc, n=40, clock=read)
    assert enc.calls == 1  # a hit: nothing extracted, the build's seconds charged all the same
    assert read.charged == built.charged and read.spent == 0.0 and read.unknown == 0
    assert read.record() == {
        "extraction_s": built.charged,
        "extraction_spent_s": 0.0,
        "extraction_unknown": 0.0,
    }


def test_an_entry_without_recorded_seconds_loads_and_its_seconds_are_unknown(tmp_path):
    cache, enc = FeatureCache(tmp_path), Encoder()
    cache.get(_key(), enc, n=40)
    path = cache.path(_key()) / MARKER
    manifest = json.loads(path.read_text())
    del manifest["build_seconds"]  # as written before the cache recorded it
    path.write_text(json.dumps(manifest))
    clock = ExtractionTime()
    np.testing.assert_array_equal(cache.get(_key(), enc, n=40, clock=clock), ROWS)
    assert enc.calls == 1 and clock.unknown == 1 and clock.charged == clock.spent == 0.0


def test_waiting_for_another_workers_build_is_spent_extracting(tmp_path):
    """A worker that waits on the lock while another builds the entry reads it, charged its
    recorded seconds, and counts its wait as time spent extracting (it is in its wall time)."""

    class Watched(FeatureCache):
        looked = threading.Event()  # set once the waiter found no entry and goes for the lock

        def _load(self, folder, key):
            self.looked.set()
            return super()._load(folder, key)

    cache, enc, clock = Watched(tmp_path), Encoder(), ExtractionTime()
    folder = cache.path(_key())
    lock = FileLock(str(folder) + ".lock")
    lock.acquire()
    waiter = threading.Thread(target=lambda: cache.get(_key(), enc, n=40, clock=clock))
    waiter.start()
    assert cache.looked.wait(timeout=30)
    time.sleep(0.2)
    build_atomically(folder, MARKER, lambda tmp: _write(tmp, _key(), Encoder(), 40))
    lock.release()
    waiter.join(timeout=30)
    recorded = json.loads((folder / MARKER).read_text())["build_seconds"]
    assert enc.calls == 0 and clock.charged == recorded and clock.spent >= 0.2
