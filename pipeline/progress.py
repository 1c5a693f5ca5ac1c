"""Progress of a labeling run on stderr: videos, frames, frames/s and errors so far."""

from __future__ import annotations

import sys
import time
from typing import Any

_last = 0.0


def print_progress(snapshot: dict[str, Any], every_seconds: float = 10.0) -> None:
    global _last
    now = time.monotonic()
    if now - _last < every_seconds:
        return
    _last = now
    print(
        f"progress: {snapshot['shards']}/{snapshot['shards_total']} shards, "
        f"{snapshot['videos']} videos, {snapshot['frames']} frames, "
        f"{snapshot['frames_per_second']:.2f} frames/s, {snapshot['errors']} errors",
        file=sys.stderr,
        flush=True,
    )
