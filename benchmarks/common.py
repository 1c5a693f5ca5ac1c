"""Helpers shared by the benchmarks: timing, machine description, JSON output, tables, inputs.

Benchmarks run on a shared 2-core machine, so every result records the load average next to the
numbers: a slow run under load is then recognisable as such instead of looking like a regression.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

T = TypeVar("T")

RESULTS_DIR = Path(__file__).resolve().parent / "results"
# The shared real clips sit beside the repository (../shared/data/real), never inside it.
REAL_DATA_ROOT = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "real"


def default_out(name: str) -> Path:
    """``benchmarks/results/<name>.json``."""
    return RESULTS_DIR / f"{name}.json"


def load_average() -> dict[str, float]:
    """1, 5 and 15 minute load averages (runnable + running tasks; compare with cpu_count)."""
    one, five, fifteen = os.getloadavg()
    return {"load_average_1min": one, "load_average_5min": five, "load_average_15min": fifteen}


def machine_info(packages: Sequence[str] = ("numpy",)) -> dict[str, Any]:
    """Interpreter, package versions, CPU count and the current load average, as flat keys.

    Versions come from the installed distributions' metadata so this never imports torch.
    """
    info: dict[str, Any] = {"python": platform.python_version()}
    for name in packages:
        try:
            info[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            info[name] = None
    info.update(
        {
            "machine": platform.machine(),
            "platform": platform.platform(),
            "cpu_count": os.cpu_count(),
        }
    )
    info.update(load_average())
    return info


def load_line(result: Mapping[str, Any]) -> str:
    """How busy the machine was around a benchmark, for its printout: ``result`` holds
    :func:`machine_info`'s keys (taken at the end) and ``load_average_1min_start``."""
    return (
        f"load average (1 min): {result['load_average_1min_start']:.2f} at start, "
        f"{result['load_average_1min']:.2f} at end, on {result['cpu_count']} CPUs"
    )


def timed(items: Iterable[T]) -> Iterator[tuple[T, float]]:
    """Yield ``(item, seconds)``: the wall time ``next()`` took to produce each item.

    For a lazy generator such as ``stm_core.propagate`` this is the time spent on that frame.
    """
    iterator = iter(items)
    while True:
        start = time.perf_counter()
        try:
            item = next(iterator)
        except StopIteration:
            return
        yield item, time.perf_counter() - start


def median(values: Sequence[float]) -> float:
    if not values:
        raise ValueError("median of no values")
    return float(statistics.median(values))


def checkpoint_identity(path: str | Path) -> dict[str, Any]:
    """Which weights a result belongs to: a path names whatever file is there today (the shipped
    asset is replaced by newer versions), its hash and training metadata do not. The training
    config is left out of the metadata: it is long and the name and step identify it."""
    from stm_core.checkpoint import checkpoint_sha256, read_metadata

    metadata = read_metadata(path)
    keys = ("version", "name", "stage", "step")
    return {
        "checkpoint": str(path),
        "checkpoint_sha256": checkpoint_sha256(path),
        "checkpoint_metadata": {key: metadata[key] for key in keys if key in metadata},
    }


def write_json(path: Path, result: dict[str, Any]) -> None:
    """Write ``result`` as indented JSON, creating the folder. Through a temporary file and a
    rename, because benchmarks that run for hours rewrite their JSON as they go: a run stopped
    mid-write keeps the previous whole file, never half of the new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    tmp.replace(path)


def format_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A markdown table with padded columns (readable in a terminal, pasteable in a README)."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]

    def line(row: Sequence[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |"

    rule = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(cells[0]), rule, *(line(r) for r in cells[1:])])


def parse_size(text: str) -> tuple[int, int]:
    """``"854x480"`` (width x height, as video sizes are usually written) -> ``(height, width)``."""
    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise ValueError(f"size must be WIDTHxHEIGHT, e.g. 854x480, got {text!r}") from None
    if width < 1 or height < 1:
        raise ValueError(f"size must be positive, got {text!r}")
    return height, width


def box_seed(height: int, width: int, n_objects: int) -> np.ndarray:
    """``height x width`` uint8 label map with objects 1..n as side-by-side boxes.

    Each object gets its own column of the frame; its box is half the column wide and a third of
    the frame high, centred, so the boxes never touch and every object has pixels at any size.
    """
    if n_objects < 1:
        raise ValueError(f"need at least one object, got {n_objects}")
    labels = np.zeros((height, width), np.uint8)
    column = width / n_objects
    top, bottom = height // 3, max(height // 3 + 1, 2 * height // 3)
    for k in range(n_objects):
        left = int(k * column + column / 4)
        right = max(left + 1, int(k * column + 3 * column / 4))
        labels[top:bottom, left:right] = k + 1
    return labels
