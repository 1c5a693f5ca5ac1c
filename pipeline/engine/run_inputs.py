"""What a labeling run takes from the data engine's store, resolved by whoever starts the run.

The corpus job (:mod:`pipeline.corpus_job`) does not know the engine. Two keys of its config name
engine state: ``checkpoint_uri`` left unset means the store's promoted checkpoint
(``checkpoints/promoted.json`` under ``output_uri``), else the model shipped in the package; and
``corrections_uri`` is a folder of corrections tables. Both entrypoints, ``jobs/label_corpus.py``
(and so ``stm-label label``) and the nightly label step, call :func:`resolve_label_inputs` and
pass its result to :func:`pipeline.corpus_job.run_label_job`.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Mapping
from dataclasses import dataclass

from pipeline.corpus import RleSeed
from pipeline.corpus_job import Corrections, JobConfigError, read_checkpoint
from schemas.common import StorageOptions
from schemas.label_job import LabelJobConfig

from .corrections import corrections_by_video, read_corrections
from .layout import EngineLayout
from .registry import read_promoted

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LabelInputs:
    """The arguments of ``run_label_job`` beyond its config."""

    checkpoint: tuple[bytes, str]  # the model file's bytes, validated, and its id
    corrections: Corrections | None  # None when the config names no corrections_uri


def resolve_label_inputs(config: LabelJobConfig) -> LabelInputs:
    """The checkpoint a run of ``config`` labels with, read and validated now (a wrong file fails
    before Ray starts), and its corrections, read when the job asks for them (after its plan is
    saved, see ``pipeline.corpus_job._with_corrections``)."""
    uri = config.checkpoint_uri or default_checkpoint_uri(config)
    checkpoint = read_checkpoint(uri, config.storage)
    corrections = None
    if config.corrections_uri is not None:
        corrections = functools.partial(_corrections, config.corrections_uri, config.storage)
    return LabelInputs(checkpoint, corrections)


def default_checkpoint_uri(config: LabelJobConfig) -> str:
    """The checkpoint a run uses when the config names none: the data engine's promoted one in
    the output store (``checkpoints/promoted.json``), else the model shipped in the package."""
    pointer = read_promoted(EngineLayout(config.output_uri), config.storage)
    if pointer is not None:
        log.info("using the promoted checkpoint %s (%s)", pointer.checkpoint_id, pointer.uri)
        return pointer.uri
    from stm_core.assets import default_checkpoint_path

    path = default_checkpoint_path()
    if path is None:
        raise JobConfigError("no checkpoint_uri given and this installation ships no model")
    return str(path)


def _corrections(uri: str, options: StorageOptions) -> Mapping[str, tuple[RleSeed, ...]]:
    return corrections_by_video(read_corrections(uri, options))
