"""The exporter run with its garbage collections watched: how long each one stopped the
process, and on request what the collector tracks, by type.

    python bench/gcwatch.py REPORT [exporter arguments, e.g. run]

Runs `python -m exporter ARGS` in this process (the exporter package found on PYTHONPATH)
with a `gc.callbacks` hook timing every collection. SIGUSR1 writes REPORT (JSON): every
collection so far (generation, seconds, objects collected), the collector's thresholds and
counts, the objects frozen by `gc.freeze()`, and the objects it tracks now counted by type
(`gc.get_objects()`: a walk of all of them, so the process stops for it; asked for once, at
the end of a measurement). SIGUSR2 writes the same without the census. Used by
bench/fleet.py; not part of the exporter.
"""

from __future__ import annotations

import collections
import gc
import json
import os
import runpy
import signal
import sys
import time
import tracemalloc
from pathlib import Path
from types import FrameType


class Watch:
    def __init__(self, report: Path) -> None:
        self.report = report
        self.collections: list[tuple[int, float, int]] = []  # generation, seconds, collected
        self._started = 0.0

    def on_collection(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        else:
            self.collections.append(
                (info["generation"], time.perf_counter() - self._started, info["collected"])
            )

    def write(self, *, census: bool) -> None:
        data: dict[str, object] = {
            "collections": self.collections,
            "threshold": gc.get_threshold(),
            "count": gc.get_count(),
            "frozen": gc.get_freeze_count(),
        }
        if census:
            started = time.perf_counter()
            objects = gc.get_objects()
            by_type = collections.Counter(type(o).__qualname__ for o in objects)
            data["tracked"] = len(objects)
            data["by_type"] = dict(by_type.most_common(60))
            data["held_by_type"] = held(objects)
            del objects
            data["census_seconds"] = time.perf_counter() - started
        if tracemalloc.is_tracing():
            stats = tracemalloc.take_snapshot().statistics("lineno")
            data["allocated_by_line"] = [(str(s.traceback), s.size, s.count) for s in stats[:40]]
            data["allocated_total"] = sum(s.size for s in stats)
        temporary = self.report.with_suffix(".tmp")
        temporary.write_text(json.dumps(data))
        os.replace(temporary, self.report)  # the reader never sees half a file


def held(objects: list[object]) -> dict[str, int]:
    """Bytes by the type of the tracked object that holds them: its own size plus that of the
    untracked objects it refers to (bytes, str, numbers, untracked tuples), each counted once."""
    seen: set[int] = set()
    out: collections.Counter[str] = collections.Counter()
    for o in objects:
        name = type(o).__qualname__
        out[name] += sys.getsizeof(o)
        for r in gc.get_referents(o):
            if not gc.is_tracked(r) and id(r) not in seen:
                seen.add(id(r))
                out[name] += sys.getsizeof(r)
    return dict(out.most_common(40))


def main() -> None:
    # Run as a script, this folder leads sys.path; the exporter's imports must not see it.
    if sys.path and Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
        del sys.path[0]
    watch = Watch(Path(sys.argv[1]))
    gc.callbacks.append(watch.on_collection)

    def census(_signum: int, _frame: FrameType | None) -> None:
        watch.write(census=True)

    def pauses(_signum: int, _frame: FrameType | None) -> None:
        watch.write(census=False)

    signal.signal(signal.SIGUSR1, census)
    signal.signal(signal.SIGUSR2, pauses)
    sys.argv = ["exporter", *sys.argv[2:]]
    runpy.run_module("exporter", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
