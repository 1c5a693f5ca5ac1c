"""Resuming from a remote checkpoint: every worker reads its own copy.

Two workers on one node resume together; Ray's ``Checkpoint.as_directory`` gives both the same
download directory, and a late worker re-downloads into it while the first reads (the cause of
a resumed run failing on a checkpoint that was whole in the bucket). ``private_copy`` must give
each caller a separate, complete directory, and leave a local checkpoint where it is.
"""

from __future__ import annotations

from pathlib import Path

import fsspec
import pyarrow.fs
import ray.train

from pipeline.training.ray_trainer import private_copy


def remote_checkpoint(files: dict[str, bytes]) -> ray.train.Checkpoint:
    """A checkpoint on a non-local pyarrow filesystem (fsspec's in-memory one)."""
    memory = fsspec.filesystem("memory")
    for name, data in files.items():
        memory.pipe_file(f"/bucket/run/checkpoint_1/{name}", data)
    filesystem = pyarrow.fs.PyFileSystem(pyarrow.fs.FSSpecHandler(memory))
    return ray.train.Checkpoint("/bucket/run/checkpoint_1", filesystem=filesystem)


def test_each_caller_gets_its_own_complete_copy():
    files = {"model.pt": b"m" * 4096, "trainer.pt": b"t" * 128}
    checkpoint = remote_checkpoint(files)
    with private_copy(checkpoint) as first, private_copy(checkpoint) as second:
        assert first != second
        for directory in (first, second):
            assert {p.name: p.read_bytes() for p in directory.iterdir()} == files
        (first / "model.pt").write_bytes(b"overwritten")  # what a racing download would do
        assert (second / "model.pt").read_bytes() == files["model.pt"]
    assert not first.exists() and not second.exists()  # cleaned up after use


def test_local_checkpoint_is_read_in_place(tmp_path: Path):
    (tmp_path / "model.pt").write_bytes(b"weights")
    checkpoint = ray.train.Checkpoint.from_directory(tmp_path)
    with private_copy(checkpoint) as directory:
        assert directory == tmp_path
    assert (tmp_path / "model.pt").read_bytes() == b"weights"
