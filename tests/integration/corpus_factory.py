"""Small synthetic corpora for the labeling-job tests: frame folders, mp4 files, seed tables.

Everything is tiny on purpose (48 x 64 frames, 4-8 frames, 1-2 objects): the machine running the
tests has two cores shared with other work, and what the tests check (one row per frame and
object, exact seeds, equality with ``stm_core.propagate``, resume, errors) does not depend on
the size of the frames.

A corpus is built in a local folder with :class:`CorpusBuilder` (the DAVIS layout:
``JPEGImages/480p/<video>/00000.jpg``; video files anywhere else; a Parquet seed table next to
the corpus, not inside it) and then uploaded under an ``s3://`` prefix with :func:`upload_tree`.
:func:`read_output` and :func:`etags` read back what a run wrote.
"""

from __future__ import annotations

import io
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import av
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from pipeline.toy_corpus import (  # noqa: F401  (re-exported for the tests)
    SyntheticVideo,
    encode_mp4,
    rle,
    seed_rows,
    synthetic_video,
)
from schemas.tables import SEEDS, SeedRow

Size = tuple[int, int]  # (height, width) in pixels
FRAME_SIZE: Size = (48, 64)
DAVIS_FRAMES = "JPEGImages/480p"


@dataclass
class CorpusBuilder:
    """A corpus folder (``root/corpus``) and its seed table (``root/seeds.parquet``).

    ``seeds`` accumulates seed rows; ``expected_seeds`` keeps, per video id, the seeded label
    maps by frame, i.e. what the labeling job must store as ``is_seed`` rows.
    """

    root: Path
    seeds: list[SeedRow] = field(default_factory=list)
    expected_seeds: dict[str, dict[int, np.ndarray]] = field(default_factory=dict)

    @property
    def corpus(self) -> Path:
        return self.root / "corpus"

    @property
    def seed_table(self) -> Path:
        return self.root / "seeds.parquet"

    def frame_folder(self, video_id: str, frames: Iterable[np.ndarray]) -> Path:
        """A DAVIS frame folder ``JPEGImages/480p/<video_id>/00000.jpg, ...``."""
        folder = self.corpus / DAVIS_FRAMES / video_id
        folder.mkdir(parents=True, exist_ok=True)
        for t, frame in enumerate(frames):
            Image.fromarray(frame).save(folder / f"{t:05d}.jpg", quality=92)
        return folder

    def video_file(self, rel: str, frames: Sequence[np.ndarray], faststart: bool = False) -> Path:
        """An mp4 at ``corpus/<rel>``; its video id is ``rel``."""
        return encode_mp4(self.corpus / rel, frames, faststart)

    def raw_file(self, rel: str, data: bytes) -> Path:
        """Any bytes at ``corpus/<rel>`` (a corrupt frame, a truncated video, ...)."""
        path = self.corpus / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        return path

    def seed(self, video_id: str, frame_index: int, labels: np.ndarray) -> None:
        """Seed every object of ``labels`` on ``frame_index``."""
        self.seeds.extend(seed_rows(video_id, frame_index, labels))
        self.expected_seeds.setdefault(video_id, {})[frame_index] = labels.copy()

    def add_video(
        self, video_id: str, video: SyntheticVideo, seeds: dict[int, Sequence[int]]
    ) -> None:
        """A frame folder (``video_id`` without a suffix) or an mp4 (``*.mp4``) plus seeds:
        ``{frame: object ids}`` seeds those objects' true masks on that frame."""
        if video_id.endswith(".mp4"):
            self.video_file(video_id, video.frames)
        else:
            self.frame_folder(video_id, video.frames)
        for frame, ids in seeds.items():
            labels = np.where(np.isin(video.labels[frame], list(ids)), video.labels[frame], 0)
            self.seed(video_id, frame, labels.astype(np.uint8))

    def write_seed_table(self) -> Path:
        """The accumulated seed rows as ``seeds.parquet`` (SEEDS schema)."""
        self.root.mkdir(parents=True, exist_ok=True)
        pq.write_table(SEEDS.table(self.seeds), self.seed_table)
        return self.seed_table


def upload_tree(fs: object, local_root: Path, uri: str) -> str:
    """Every file under ``local_root`` to ``uri`` (``s3://bucket/prefix``) in one batch, keys
    only (S3 has no folders); returns ``uri``."""
    prefix = uri.removeprefix("s3://").rstrip("/")
    fs.pipe(  # type: ignore[attr-defined]
        {
            f"{prefix}/{p.relative_to(local_root).as_posix()}": p.read_bytes()
            for p in sorted(local_root.rglob("*"))
            if p.is_file()
        }
    )
    return uri


def make_checkpoint(path: Path, seed: int = 0, trunk: str = "resnet18") -> Path:
    """A random-weight STM checkpoint (seeded, so every call writes the same weights)."""
    import torch

    from stm_core import STM, save_checkpoint

    path.parent.mkdir(parents=True, exist_ok=True)
    state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        save_checkpoint(STM(trunk), path, metadata={"note": "random weights for tests"})
    finally:
        torch.random.set_rng_state(state)
    return path


def mp4_bytes(frames: Sequence[np.ndarray], faststart: bool = False) -> bytes:
    """An encoded mp4 as bytes (through a temporary file: faststart needs a seekable path)."""
    with tempfile.TemporaryDirectory() as tmp:
        return encode_mp4(Path(tmp) / "v.mp4", frames, faststart).read_bytes()


def cut_in_last_packet(data: bytes) -> bytes:
    """An mp4 cut in the middle of its last video packet, as an upload that stopped short.

    For a faststart mp4 (index first) the first frames still decode and the error comes
    mid-stream; for a plain one the index (at the end) is lost and the file does not open."""
    with av.open(io.BytesIO(data)) as container:
        packets = [(p.pos, p.size) for p in container.demux(container.streams.video[0]) if p.size]
    pos, size = max(packets)
    return data[: pos + size // 2]


def read_output(output_uri: str, storage: object, table: str) -> pa.Table:
    """``<output>/<table>`` (``masks`` or ``errors``) read the way users read it: one pyarrow
    dataset over every run with hive partitioning, then checked against the table's contract
    (which rejects, e.g., a ``stage`` outside ``ERROR_STAGES``) and put in its sort order."""
    import pyarrow.dataset as ds

    from pipeline.storage import pyarrow_filesystem
    from schemas.tables import ERRORS, MASKS, RUN_PARTITION_SCHEMA

    spec = {"masks": MASKS, "errors": ERRORS}[table]
    fs, path = pyarrow_filesystem(output_uri, storage)  # type: ignore[arg-type]
    dataset = ds.dataset(
        f"{path}/{table}",
        filesystem=fs,
        format="parquet",
        partitioning=ds.partitioning(RUN_PARTITION_SCHEMA, flavor="hive"),
    )
    assert dataset.schema.field("run_id").type == pa.string()
    return spec.sort(spec.check(dataset.to_table(columns=spec.schema.names)))


def etags(fs: object, prefix_uri: str) -> dict[str, str]:
    """Key (relative to ``prefix_uri``) -> ETag of every object under it: equal before and
    after means nothing was rewritten, added or removed."""
    path = prefix_uri.removeprefix("s3://")
    found = fs.find(path, detail=True)  # type: ignore[attr-defined]
    return {name[len(path) + 1 :]: info["ETag"] for name, info in found.items()}
