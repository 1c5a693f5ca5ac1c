"""Quality of a checkpoint: J&F on the held-out synthetic set and on every real clip.

    python -m benchmarks.eval_model --checkpoint stm_core/assets/stm_resnet18_synthetic.pt

Held-out synthetic videos come from photos and seeds training never uses; the real clips
(../shared/data/real) are evaluation-only. ``--seen-photos N`` also scores N new videos made
from the training photos: the gap to the held-out score is how much the model leans on the
photos it was trained on. Every object is seeded on its first annotated frame.
``--adapt-steps N`` fine-tunes a copy of the model on each video's seed frames first
(``stm_core.adaptation``); the JSON records the settings and the adaptation time is included in
``seconds``.
Writes JSON (default benchmarks/results/model_eval.json) and prints one table per set.
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from benchmarks.common import checkpoint_identity, write_json
from pipeline.evaluation import evaluate_root
from stm_core import STM, load_model
from stm_core.adaptation import Adaptation, parse_crop
from stm_core.metrics import SequenceScores, format_table, summarize
from stm_core.propagation import PRECISIONS
from stm_core.training.heldout import evaluation_videos, heldout_videos, save_as_davis
from stm_core.training.synthetic_video import SyntheticVideo

REAL_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "real"
HELDOUT_SEED_BASE = 0  # the README's held-out evaluation set
SEEN_SEED_BASE = 1000  # --seen-photos videos: training photos, seeds from here


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument(
        "--heldout", type=int, default=12, help="held-out synthetic videos (0: skip the set)"
    )
    parser.add_argument("--frames", type=int, default=30, help="frames per synthetic video")
    parser.add_argument(
        "--seen-photos", type=int, default=0, help="synthetic videos of the training photos"
    )
    parser.add_argument("--real", type=Path, default=REAL_DATA)
    parser.add_argument("--skip-real", action="store_true")
    parser.add_argument(
        "--real-videos",
        nargs="+",
        default=None,
        metavar="NAME",
        help="score only these clips of --real (default: all)",
    )
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument(
        "--adapt-steps", type=int, default=0, help="first-frame fine-tuning steps (0 = off)"
    )
    parser.add_argument("--adapt-lr", type=float, default=Adaptation.lr)
    parser.add_argument(
        "--adapt-seed", type=int, default=Adaptation.seed, help="the adaptation clips' seed"
    )
    parser.add_argument(
        "--adapt-crop", default="frame", help="adaptation clip size: 'frame' or HxW"
    )
    parser.add_argument(
        "--precision", choices=PRECISIONS, default="fp32", help="autocast mode of propagation"
    )
    parser.add_argument(
        "--max-side",
        type=int,
        default=None,
        help="propagate frames downscaled to this longer side, score at the native size",
    )
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/model_eval.json"))
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    model = load_model(args.checkpoint, device="cpu")
    adaptation = Adaptation(
        steps=args.adapt_steps,
        lr=args.adapt_lr,
        seed=args.adapt_seed,
        crop=parse_crop(args.adapt_crop),
    )
    result: dict = {
        **checkpoint_identity(args.checkpoint),
        "trunk": model.spec.name,
        "adaptation": dataclasses.asdict(adaptation) if adaptation.enabled else None,
        "precision": args.precision,
        "max_side": args.max_side,
    }
    start = time.monotonic()
    in_progress: dict[str, SequenceScores] = {}

    def save_progress(video_id: str, video: SequenceScores) -> None:
        """The JSON as it stands after each video, so a run of hours that is stopped keeps
        what it measured: the finished sets, and under ``unfinished`` the videos of the set in
        progress."""
        in_progress[video_id] = video
        partial = result | {"unfinished": summarize(in_progress)}
        write_json(args.out, partial | {"seconds": time.monotonic() - start})

    settings = {
        "adaptation": adaptation,
        "precision": args.precision,
        "max_side": args.max_side,
        "on_scored": save_progress,
    }
    if args.heldout:
        videos = heldout_videos(args.heldout, args.frames, seed_base=HELDOUT_SEED_BASE)
        in_progress.clear()
        result["heldout_synthetic"] = _score_videos(
            model, videos, title="held-out synthetic", **settings
        )
    if args.seen_photos:
        videos = evaluation_videos(
            args.seen_photos, args.frames, seed_base=SEEN_SEED_BASE, split="train"
        )
        in_progress.clear()
        title = "synthetic videos of the training photos"
        result["seen_photos_synthetic"] = _score_videos(model, videos, title=title, **settings)
    if not args.skip_real and args.real.is_dir():
        in_progress.clear()
        result["real"] = _score_root(
            model, args.real, title="real clips", videos=args.real_videos, **settings
        )
    result["seconds"] = time.monotonic() - start
    write_json(args.out, result)
    return 0


def _score_root(
    model: STM,
    root: Path,
    adaptation: Adaptation,
    title: str,
    precision: str = "fp32",
    max_side: int | None = None,
    videos: list[str] | None = None,
    on_scored: Callable[[str, SequenceScores], None] | None = None,
) -> dict:
    """J&F of the videos under a DAVIS-layout ``root`` (all, or those named in ``videos``),
    printed as a table under ``title``; each video's score is printed (and passed to
    ``on_scored``) as soon as it is known."""
    started = time.monotonic()

    def report(video_id: str, video: SequenceScores) -> None:
        seconds = time.monotonic() - started
        print(f"{title}: {video_id} J&F {100 * video.j_and_f:.1f} ({seconds:.0f} s)", flush=True)
        if on_scored is not None:
            on_scored(video_id, video)

    scores = evaluate_root(
        model,
        root,
        adaptation=adaptation,
        precision=precision,
        max_side=max_side,
        on_scored=report,
        videos=videos,
    )
    print(f"\n{title} (J, F, J&F in %)")
    print(format_table(scores))
    return scores


def _score_videos(
    model: STM,
    videos: list[SyntheticVideo],
    adaptation: Adaptation,
    title: str,
    precision: str = "fp32",
    max_side: int | None = None,
    on_scored: Callable[[str, SequenceScores], None] | None = None,
) -> dict:
    """Generated videos are scored through the same DAVIS-layout files as the real clips (JPEG
    frames, PNG masks), so both sets go through the same reading code."""
    with tempfile.TemporaryDirectory() as tmp:
        save_as_davis(videos, tmp)
        return _score_root(
            model, Path(tmp), adaptation, title, precision, max_side, on_scored=on_scored
        )


if __name__ == "__main__":
    raise SystemExit(main())
