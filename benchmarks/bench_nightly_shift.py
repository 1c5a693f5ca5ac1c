"""One night of the data engine on footage in a shifted look: held-out J&F before and after.

The look is far from the daylight synthetic world: v1 never saw anything like it; from v4 on,
training films some clips through random sensor looks (dim, flat, tinted, grainy), of which
night vision is one point, so the before/after numbers depend on the model.

The corpus is ``--videos`` "night vision" videos (``stm_core.training.domains``: the synthetic
world the shipped model trained on, rendered dark, grainy and green) of ``--frames`` frames at
``--size``, seeded on frame 0 only. The held-out ground truth is ``--heldout`` other night-vision
videos (disjoint seeds), every frame annotated. One ``run_nightly`` labels the corpus with the
shipped model, selects seeds and confident pseudo-labels, fine-tunes for ``--steps`` steps on Ray
Train (local, CPU), and the gate scores the shipped model ("before") and the candidate ("after")
on the held-out set. Everything is in a temporary local store.

Usage, from the repository root: ``python -m benchmarks.bench_nightly_shift [--steps 150]
[--videos 6] [--frames 30] [--heldout 4] [--size 432x240] [--out PATH]``. Writes JSON (default
``benchmarks/results/nightly_shift.json``) and prints a table. Pause other heavy work first: Ray
runs its workers at a lower priority than other processes.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path

from benchmarks.common import (
    checkpoint_identity,
    default_out,
    format_table,
    load_average,
    machine_info,
    parse_size,
    write_json,
)

CORPUS_SEED_BASE, HELDOUT_SEED_BASE = 5000, 6000


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--videos", type=int, default=6)
    parser.add_argument("--frames", type=int, default=30)
    parser.add_argument("--heldout", type=int, default=4)
    parser.add_argument("--size", default="432x240", help="WIDTHxHEIGHT")
    parser.add_argument("--crop", type=int, default=192)
    parser.add_argument("--lr", type=float, default=5e-5)
    parser.add_argument("--out", type=Path, default=default_out("nightly_shift"))
    return parser.parse_args(argv)


def make_data(root: Path, args: argparse.Namespace) -> tuple[Path, Path]:
    from stm_core.training.domains import shifted_videos
    from stm_core.training.heldout import save_as_davis

    size = parse_size(args.size)
    corpus_videos = shifted_videos(args.videos, args.frames, size, CORPUS_SEED_BASE)
    corpus = save_as_davis(corpus_videos, root / "corpus")
    for mask in (corpus / "Annotations" / "480p").rglob("*.png"):
        if mask.name != "00000.png":  # the team gives seeds only
            mask.unlink()
    heldout_videos = shifted_videos(args.heldout, args.frames, size, HELDOUT_SEED_BASE)
    return corpus, save_as_davis(heldout_videos, root / "heldout")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from pipeline.engine.nightly import run_nightly
    from pipeline.ray_connect import connect
    from schemas.nightly import NightlyConfig
    from stm_core.assets import default_checkpoint_path

    root_model = default_checkpoint_path()  # the night starts from the shipped model
    if root_model is None:
        raise SystemExit("this installation ships no model (stm_core/assets) to start the night")
    load_before = load_average()
    with tempfile.TemporaryDirectory(prefix="bench-nightly-") as tmp:
        root = Path(tmp)
        corpus, heldout = make_data(root, args)
        connect(None, num_cpus=2)
        config = NightlyConfig.model_validate(
            {
                "store_uri": str(root / "store"),
                "corpus_uri": str(corpus),
                "heldout_uri": str(heldout),
                "run_id": "bench-night",
                "initial_checkpoint_uri": str(root_model),
                "train": {
                    "steps": args.steps,
                    "crop": [args.crop, args.crop],
                    "lr": args.lr,
                    "checkpoint_every": max(args.steps // 3, 1),
                    "threads_per_worker": 2,
                },
                "gate": {"margin": 0.5, "num_cpus": 1},
            }
        )
        started = time.monotonic()
        record = run_nightly(config)
        seconds = time.monotonic() - started
    result = {
        "config": {k: v for k, v in vars(args).items() if k != "out"} | {"out": str(args.out)},
        "root_model": checkpoint_identity(root_model),
        "before_jf": record.parent_jf,
        "after_jf": record.candidate_jf,
        "after_j": record.candidate_j,
        "after_f": record.candidate_f,
        "promoted": record.promoted,
        "reason": record.reason,
        "videos_labeled": record.videos_labeled,
        "selected_masks": record.selected_masks,
        "selected_frames": record.selected_frames,
        "step_seconds": record.step_seconds,
        "total_seconds": seconds,
        "load_average_before": load_before,
        "load_average_after": load_average(),
        "machine": machine_info(("torch", "ray")),
    }
    write_json(args.out, result)
    rows = [
        ["shipped model (before)", f"{100 * record.parent_jf:.1f}", "", ""],
        [
            f"after one night ({args.steps} steps)",
            f"{100 * record.candidate_jf:.1f}",
            f"{100 * record.candidate_j:.1f}",
            f"{100 * record.candidate_f:.1f}",
        ],
    ]
    print(format_table(["held-out night-vision", "J&F %", "J %", "F %"], rows))
    print(f"promoted: {record.promoted} ({record.reason})")
    steps = ", ".join(f"{k} {v:.0f} s" for k, v in record.step_seconds.items())
    print(f"{record.selected_masks} masks on {record.selected_frames} frames selected; {steps}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
