"""Choose the training data of a fine-tune: seeds, corrections and confident pseudo-labels.

Training clips need every object of a frame (a clip's label map says "background" wherever no
object is), so selection is per frame: a frame is kept when it holds a seed or a correction, or
when every object's pseudo-label on it is confident. A pseudo-label is confident when

- its score (mean foreground probability inside the mask) is at least ``min_score``, or the
  mask is empty (the object is absent), and
- it agrees with the same object's masks on the previous and next frames: the smaller of the
  two IoUs (computed on the RLE runs) is at least ``min_consistency``. Two empty masks agree.

Corrections replace the labeled mask of their (frame, object). The result is a ``selection``
table (``schemas.tables.SELECTION``) holding the masks themselves, so the fine-tune it fed can
be reproduced after newer labels supersede them.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from pipeline.rle import iou
from schemas.nightly import SelectionConfig
from schemas.tables import SELECTION, SelectionRow

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Mask:
    frame_index: int
    object_id: int
    height: int
    width: int
    rle: bytes
    area: int
    score: float
    is_seed: bool
    run_id: str | None
    corrected: bool = False


def select_training_data(
    selection_id: str,
    masks: pa.Table,
    corrections: pa.Table,
    config: SelectionConfig,
) -> pa.Table:
    """The selection table of ``masks`` (each video's newest labels, MASKS rows) and
    ``corrections`` (newest per frame and object, CORRECTIONS rows)."""
    fixes: dict[str, dict[tuple[int, int], dict]] = defaultdict(dict)
    for row in corrections.to_pylist():
        fixes[row["video_id"]][(row["frame_index"], row["object_id"])] = row
    by_video: dict[str, list[dict]] = defaultdict(list)
    for row in masks.to_pylist():
        by_video[row["video_id"]].append(row)
    rows: list[SelectionRow] = []
    for video_id in sorted(by_video):
        rows.extend(
            _select_video(selection_id, video_id, by_video[video_id], fixes[video_id], config)
        )
    table = SELECTION.sort(SELECTION.table(rows))
    log.info(
        "selection %s: %d masks on %d frames of %d videos",
        selection_id,
        table.num_rows,
        len({(r.video_id, r.frame_index) for r in rows}),
        len({r.video_id for r in rows}),
    )
    return table


def _select_video(
    selection_id: str,
    video_id: str,
    rows: Iterable[dict],
    fixes: dict[tuple[int, int], dict],
    config: SelectionConfig,
) -> list[SelectionRow]:
    tracks: dict[int, dict[int, _Mask]] = defaultdict(dict)  # object -> frame -> mask
    for r in rows:
        tracks[r["object_id"]][r["frame_index"]] = _Mask(
            r["frame_index"],
            r["object_id"],
            r["height"],
            r["width"],
            r["rle"],
            r["area"],
            r["score"],
            r["is_seed"],
            r["run_id"],
        )
    for (frame, obj), fix in fixes.items():
        if obj in tracks and frame in tracks[obj]:  # a correction of a labeled frame and object
            tracks[obj][frame] = _Mask(
                frame, obj, fix["height"], fix["width"], fix["rle"], 1, 1.0, False, None, True
            )
    frames = sorted({f for track in tracks.values() for f in track})
    consistency = {(obj, f): _consistency(track, f) for obj, track in tracks.items() for f in track}
    chosen = []
    for f in frames:
        on_frame = [track[f] for track in tracks.values() if f in track]
        anchored = any(m.is_seed or m.corrected for m in on_frame)
        if anchored or (
            config.pseudo_labels
            and all(_confident(m, consistency[(m.object_id, f)], config) for m in on_frame)
        ):
            chosen.append(f)
    anchors = [
        f
        for f in chosen
        if any(m.is_seed or m.corrected for m in (track.get(f) for track in tracks.values()) if m)
    ]
    chosen = _spread(chosen, config.max_frames_per_video, anchors)
    out = []
    for f in chosen:
        for obj in sorted(tracks):
            m = tracks[obj].get(f)
            if m is None:
                continue
            source = "correction" if m.corrected else "seed" if m.is_seed else "pseudo"
            anchor = source != "pseudo"
            out.append(
                SelectionRow(
                    selection_id=selection_id,
                    video_id=video_id,
                    frame_index=f,
                    object_id=obj,
                    height=m.height,
                    width=m.width,
                    rle=m.rle,
                    source=source,
                    run_id=m.run_id,
                    score=1.0 if anchor else m.score,
                    consistency=1.0 if anchor else consistency[(obj, f)],
                )
            )
    return out


def _consistency(track: dict[int, _Mask], frame: int) -> float:
    """Smaller IoU of the mask on ``frame`` with the masks on the frames next to it."""
    mask = track[frame]
    values = [
        iou(mask.rle, track[n].rle, mask.height, mask.width)
        for n in (frame - 1, frame + 1)
        if n in track
    ]
    return min(values) if values else 0.0


def _confident(mask: _Mask, consistency: float, config: SelectionConfig) -> bool:
    if mask.is_seed or mask.corrected:
        return True
    sure = mask.area == 0 or mask.score >= config.min_score
    return sure and consistency >= config.min_consistency


def _spread(frames: list[int], limit: int | None, keep: list[int] = ()) -> list[int]:
    """At most ``limit`` of ``frames`` evenly spread over them (first and last kept), plus every
    frame of ``keep`` (seeds and corrections, always used): a pick nearest to a kept frame makes
    room for it, so the total stays ``max(limit, len(keep))``."""
    if limit is None or len(frames) <= limit:
        return frames
    positions = np.unique(np.round(np.linspace(0, len(frames) - 1, limit)).astype(int))
    picks = {frames[i] for i in positions}
    anchors = set(keep)
    extra = sorted(picks - anchors)
    while extra and len(picks | anchors) > limit:
        nearest = min(extra, key=lambda f: min(abs(f - a) for a in anchors))
        extra.remove(nearest)
        picks.discard(nearest)
    return sorted(picks | anchors)
