"""``stm-label``: the command line. Each subcommand parses its flags and calls one function."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from stm_core.errors import InputError, STMLabelError

if TYPE_CHECKING:
    from pipeline.run_reader import LabelRun
    from schemas.common import StorageOptions

log = logging.getLogger("stm_label")


class ProgressLine:
    """``label: 12/50 frames, 3.4 frames/s`` on stderr, rewritten in place on a terminal."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.start = time.monotonic()
        self.tty = sys.stderr.isatty()
        self.last = 0.0

    def __call__(self, done: int, total: int) -> None:
        now = time.monotonic()
        if done < total and now - self.last < (0.2 if self.tty else 5.0):
            return
        self.last = now
        rate = done / max(now - self.start, 1e-9)
        line = f"{self.label}: {done}/{total} frames, {rate:.2f} frames/s"
        end = "\n" if done >= total or not self.tty else ""
        sys.stderr.write(("\r" if self.tty else "") + line + end)
        sys.stderr.flush()


def _default_checkpoint() -> str:
    from stm_core.assets import default_checkpoint_path

    path = default_checkpoint_path()
    if path is None:
        raise STMLabelError("no --checkpoint given and this installation ships no default model")
    return str(path)


def add_storage_flags(parser: argparse.ArgumentParser) -> None:
    """The flags :func:`storage_options` reads, for a command that reaches a store."""
    group = parser.add_argument_group(
        "object storage",
        "the settings of a job's storage block (docs/usage.md#object-storage); "
        "what they leave out comes from the environment",
    )
    group.add_argument(
        "--storage-endpoint",
        metavar="URL",
        help="S3-compatible endpoint, e.g. http://127.0.0.1:9000 (storage.endpoint_url)",
    )
    group.add_argument("--storage-region", metavar="NAME", help="storage.region")
    group.add_argument(
        "--storage-anon", action="store_true", help="anonymous access to a public bucket"
    )
    group.add_argument(
        "--config",
        metavar="FILE",
        help="a job's YAML/JSON config: its storage block, credentials included (the flags "
        "above override its keys)",
    )


def storage_options(args: argparse.Namespace) -> StorageOptions:
    """The one rule for a command's store settings: the ``storage`` block of ``--config``, with
    each key a ``--storage-*`` flag gives replaced by the flag; what neither gives comes from the
    environment through s3fs's and gcsfs's own chains (``AWS_*``, ``AWS_ENDPOINT_URL_S3``,
    ``GOOGLE_APPLICATION_CREDENTIALS``, ...). A bad block is one line naming the key."""
    from schemas.common import ConfigError, StorageOptions, load_config, load_settings

    settings: dict = {}
    if args.config:
        try:
            block = load_settings(args.config).get("storage") or {}
        except (ValueError, FileNotFoundError) as exc:
            raise InputError(None, f"--config {exc}") from None
        if not isinstance(block, dict):
            raise InputError(args.config, "storage: expected a mapping of settings")
        settings.update(block)
    flags = {
        "endpoint_url": args.storage_endpoint,
        "region": args.storage_region,
        "anon": True if args.storage_anon else None,
    }
    settings.update({key: value for key, value in flags.items() if value is not None})
    try:
        return load_config(StorageOptions, None, base=settings)
    except ConfigError as exc:  # names the key, never a value
        raise InputError(args.config or "--storage-*", f"storage: {exc}") from None


def _open_run(args: argparse.Namespace, out_folder: str | None) -> LabelRun:
    """``--run`` opened with the command's storage settings, after the preflight: the run's store
    answers (a run that is not there is left to ``open_run``'s own message) and the local
    ``out_folder`` takes a create-and-delete probe."""
    from pipeline.preflight import check_readable, check_writable
    from pipeline.run_reader import open_run

    options = storage_options(args)
    check_readable("--run", args.run, options, missing_ok=True)
    if out_folder is not None:
        check_writable("--out", out_folder)
    return open_run(args.run, options, allow_incomplete=args.allow_incomplete)


def cmd_propagate(args: argparse.Namespace) -> int:
    from pipeline.folder_tasks import propagate_folder
    from stm_core import load_model
    from stm_core.adaptation import Adaptation, parse_crop

    lr = {} if args.adapt_lr is None else {"lr": args.adapt_lr}
    adaptation = Adaptation(steps=args.adapt_steps, crop=parse_crop(args.adapt_crop), **lr)
    model = load_model(args.checkpoint or _default_checkpoint(), device=args.device)
    n = propagate_folder(
        model,
        args.frames,
        args.seeds,
        args.out,
        mem_every=args.mem_every,
        max_memory_frames=args.max_memory_frames,
        resize_seeds=args.resize_seeds,
        progress=ProgressLine(Path(args.frames).name),
        adaptation=adaptation,
        precision=args.precision,
    )
    print(f"wrote {n} masks to {args.out}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from pipeline.folder_tasks import evaluate_folders, format_evaluation

    sequences = None  # --sequences a,b --sequences c: a, b and c
    if args.sequences:
        sequences = [name for text in args.sequences for name in text.split(",") if name]
    summary = evaluate_folders(args.pred, args.gt, sequences, strict=args.strict)
    print(format_evaluation(summary))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(summary, indent=2) + "\n")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from pipeline.demo import run_demo
    from stm_core import load_model
    from stm_core.metrics import format_table

    model = load_model(args.checkpoint or _default_checkpoint(), device=args.device)
    summary = run_demo(model, args.out, clips=args.clips, progress=ProgressLine("demo"))
    print(format_table(summary))
    out = Path(args.out)
    print(f"\nframes and ground truth: {out / 'clips'}\npredicted masks: {out / 'pred'}")
    return 0


def cmd_label(args: argparse.Namespace) -> int:
    from jobs.label_corpus import main as label_main

    return label_main(args.rest)


def cmd_train(args: argparse.Namespace) -> int:
    from schemas.common import load_config
    from schemas.training import TrainConfig

    try:
        config = load_config(TrainConfig, args.config, args.set or [])
    except (ValueError, FileNotFoundError) as exc:
        print(f"stm-label train: bad config: {exc}", file=sys.stderr)
        return 2
    from pipeline.preflight import check_training

    check_training(config)  # every store answers before training (and Ray) starts; else exit 2
    if args.local:
        from pipeline.training.local import train_local

        trainer = train_local(config)
        print(
            f"trained {config.name} to step {trainer.step}; checkpoints in "
            f"{Path(config.storage_path) / config.name}"
        )
        return 0
    from pipeline.ray_connect import connect
    from pipeline.training.ray_trainer import fit

    connect(args.address)
    result = fit(config)
    print(f"trained {config.name}: {result.metrics}; newest checkpoint: {result.checkpoint}")
    return 0 if result.error is None else 1


def cmd_pack_shard(args: argparse.Namespace) -> int:
    from pipeline.training.shard import ShardSettings, pack_shard

    settings = ShardSettings(
        crf=args.crf,
        photo_side=args.photo_side,
        photos_per_folder=args.photos_per_folder,
        max_videos=args.max_videos,
    )
    manifest = pack_shard(
        args.videos or [],
        args.photos or [],
        args.out,
        resolution=args.resolution,
        settings=settings,
        max_mb=args.max_mb,
    )
    photos = sum(len(group["stems"]) for group in manifest["photos"])
    print(
        f"packed {len(manifest['videos'])} videos and {photos} photos into {args.out} "
        f"({manifest['bytes'] / 1e6:.1f} MB)"
    )
    return 0


def cmd_unpack_shard(args: argparse.Namespace) -> int:
    from pipeline.training.shard import unpack_shard

    manifest = unpack_shard(args.shard, args.out)
    photos = sum(len(group["stems"]) for group in manifest["photos"])
    print(f"unpacked {len(manifest['videos'])} videos and {photos} photos into {args.out}")
    return 0


def cmd_nightly(args: argparse.Namespace) -> int:
    from jobs.nightly import main as nightly_main

    return nightly_main(args.rest)


def cmd_correct(args: argparse.Namespace) -> int:
    import getpass

    from pipeline.engine.corrections import add_correction
    from pipeline.engine.layout import EngineLayout
    from pipeline.preflight import check_readable, check_writable
    from pipeline.run_reader import parse_run_uri

    mask = Path(args.mask)
    if not mask.is_file():
        raise STMLabelError(f"{mask}: mask file not found")
    options = storage_options(args)
    check_readable("--run", args.run, options, missing_ok=True)
    corrections = EngineLayout(parse_run_uri(args.run).output_uri).corrections_dir
    check_writable("corrections of --run", corrections, options)
    uri, rows = add_correction(
        args.run,
        args.video,
        args.frame,
        mask.read_bytes(),
        str(mask),
        args.author or getpass.getuser(),
        args.object,
        options,
    )
    if uri is None:
        print(f"the same correction is stored already (video {args.video}, frame {args.frame})")
    else:
        print(
            f"stored {len(rows)} correction(s) of video {args.video} frame {args.frame} "
            f"(objects {', '.join(str(r.object_id) for r in rows)}) in {uri}"
        )
    return 0


def cmd_history(args: argparse.Namespace) -> int:
    from pipeline.engine.history import history_command
    from pipeline.preflight import check_readable, check_writable

    options = storage_options(args)
    check_readable("--store", args.store, options, missing_ok=True)  # none yet: no history
    if args.plot:
        check_writable("--plot", str(Path(args.plot).parent))
    print(history_command(args.store, args.plot, options, as_json=args.json))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from pipeline.export import DAVIS_FRAME_DIGITS, export_run

    run = _open_run(args, args.out)
    summary = export_run(
        run,
        args.format,
        args.out,
        video_ids=args.video,
        frame_digits=args.frame_digits or DAVIS_FRAME_DIGITS,
        with_frames=args.with_frames,
    )
    print(summary)
    return 0


def cmd_preview(args: argparse.Namespace) -> int:
    from pipeline.preview import render_preview

    run = _open_run(args, str(Path(args.out).parent))
    print(render_preview(run, args.video, args.out, fps=args.fps))
    return 0


def _non_negative(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="stm-label", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("propagate", help="label one folder of frames from seed masks")
    p.add_argument("--checkpoint", help="model file (default: the shipped model)")
    p.add_argument("--frames", required=True, help="folder of frames (*.jpg, *.png)")
    p.add_argument("--seeds", required=True, help="folder of seed PNGs named like their frames")
    p.add_argument("--out", required=True, help="folder for one palette PNG per frame")
    p.add_argument("--mem-every", type=_positive, default=5, help="permanent memory period")
    p.add_argument(
        "--max-memory-frames", type=_positive, default=None, help="cap on permanent memory"
    )
    p.add_argument("--device", choices=["cpu", "cuda"], default=None, help="default: auto")
    p.add_argument(
        "--precision",
        choices=["fp32", "bf16", "fp16"],
        default="fp32",
        help="autocast of the network (fp16: CUDA only; bf16 is emulated on AVX2-only CPUs)",
    )
    p.add_argument(
        "--resize-seeds", action="store_true", help="resize seeds of the wrong size (nearest)"
    )
    p.add_argument(
        "--adapt-steps",
        type=_non_negative,
        default=0,
        help="fine-tune a copy of the model on the seed frames for this many steps first "
        "(0 = off; stm_core.adaptation.Adaptation.steps is the README's measured setting)",
    )
    p.add_argument(
        "--adapt-lr",
        type=float,
        default=None,
        help="learning rate of --adapt-steps (default: stm_core.adaptation.Adaptation.lr)",
    )
    p.add_argument(
        "--adapt-crop",
        default="frame",
        help="clip size of --adapt-steps: 'frame' (the whole seed frame) or HxW, e.g. 192x192",
    )
    p.set_defaults(func=cmd_propagate)

    e = sub.add_parser("evaluate", help="J&F of predicted masks against ground truth")
    e.add_argument("--pred", required=True, help="root with one folder of PNGs per sequence")
    e.add_argument("--gt", required=True, help="root with one folder of PNGs per sequence")
    e.add_argument("--json", help="also write the scores as JSON here")
    e.add_argument(
        "--sequences",
        action="append",
        metavar="A,B",
        help="score only these ground-truth sequences (comma-separated; default: every one)",
    )
    e.add_argument(
        "--strict",
        action="store_true",
        help="a ground-truth sequence without predictions is an error, not 'not predicted'",
    )
    e.set_defaults(func=cmd_evaluate)

    d = sub.add_parser("demo", help="label generated clips with the shipped model and score them")
    d.add_argument("--out", default="out/demo", help="output folder (default: out/demo)")
    d.add_argument("--clips", type=_positive, default=3, help="number of clips")
    d.add_argument("--checkpoint", help="model file (default: the shipped model)")
    d.add_argument("--device", choices=["cpu", "cuda"], default=None, help="default: auto")
    d.set_defaults(func=cmd_demo)

    lab = sub.add_parser(
        "label",
        help="label a video corpus on Ray (starts a local Ray unless RAY_ADDRESS/--address)",
        add_help=False,
    )
    lab.set_defaults(func=cmd_label)

    t = sub.add_parser("train", help="train STM on Ray Train (resumes a run of the same name)")
    t.add_argument("--config", required=True, help="YAML/JSON TrainConfig")
    t.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a setting")
    t.add_argument("--local", action="store_true", help="train in this process, without Ray")
    t.add_argument("--address", help="Ray cluster to join (default: RAY_ADDRESS or a local one)")
    t.set_defaults(func=cmd_train)

    ps = sub.add_parser(
        "pack-shard",
        help="pack training folders into a compact shard (H.264 videos, small photos) to carry "
        "to a lent machine",
    )
    ps.add_argument("--videos", nargs="+", help="DAVIS / YouTube-VOS roots")
    ps.add_argument("--resolution", default="480p", help="DAVIS resolution folder (e.g. 360p)")
    ps.add_argument("--photos", nargs="+", help="photo folders with images/ and masks/")
    ps.add_argument("--out", required=True, help="the shard folder to write")
    ps.add_argument("--crf", type=int, default=23, help="x264 quality, lower is better (23)")
    ps.add_argument("--photo-side", type=_positive, default=320, help="photos' longer side")
    ps.add_argument("--photos-per-folder", type=_positive, help="keep this many (default: all)")
    ps.add_argument("--max-videos", type=_positive, help="videos per root (default: all)")
    ps.add_argument("--max-mb", type=float, help="fail, leaving nothing, above this size")
    ps.set_defaults(func=cmd_pack_shard)

    us = sub.add_parser("unpack-shard", help="a shard back into the folders training reads")
    us.add_argument("shard", help="the shard folder (pack-shard --out)")
    us.add_argument("out", help="where the dataset folders go")
    us.set_defaults(func=cmd_unpack_shard)

    n = sub.add_parser(
        "nightly",
        help="one night of the data engine: label, select, fine-tune, gate, promote",
        add_help=False,
    )
    n.set_defaults(func=cmd_nightly)

    run_help = "the run: <output_uri>/runs/<run_id>"
    incomplete_help = "read the finished shards of a run that is not committed"
    x = sub.add_parser("export", help="write a run's masks as DAVIS PNGs or COCO JSON")
    x.add_argument("--run", required=True, help=run_help)
    x.add_argument("--format", required=True, help="davis (palette PNGs) or coco (instances.json)")
    x.add_argument("--out", required=True, help="output folder")
    x.add_argument("--video", nargs="+", action="extend", help="only these video ids")
    x.add_argument("--allow-incomplete", action="store_true", help=incomplete_help)
    x.add_argument(
        "--frame-digits",
        type=_positive,
        help="digits of a video file's frame names (default 5, as DAVIS: 00000.png); frames "
        "of a frame folder keep their own names",
    )
    x.add_argument(
        "--with-frames",
        action="store_true",
        help="coco: also write the frames as JPEGs (read from the run's corpus) beside the JSON",
    )
    add_storage_flags(x)
    x.set_defaults(func=cmd_export)

    v = sub.add_parser("preview", help="one video of a run with its masks overlaid, as GIF/MP4")
    v.add_argument("--run", required=True, help=run_help)
    v.add_argument("--video", required=True, help="video id")
    v.add_argument("--out", required=True, help="FILE.gif or FILE.mp4 (+ FILE_sheet.png)")
    v.add_argument("--fps", type=float, default=10.0, help="frames per second (default: 10)")
    v.add_argument("--allow-incomplete", action="store_true", help=incomplete_help)
    add_storage_flags(v)
    v.set_defaults(func=cmd_preview)

    c = sub.add_parser("correct", help="store a human correction of a labeled frame")
    c.add_argument("--run", required=True, help=run_help + " (the labels being corrected)")
    c.add_argument("--video", required=True, help="video id")
    c.add_argument("--frame", required=True, type=int, help="0-based frame index")
    c.add_argument(
        "--mask",
        required=True,
        help="PNG: the frame's full annotation (label map), or one object's mask with --object",
    )
    c.add_argument("--object", type=_positive, help="correct only this object id")
    c.add_argument("--author", help="who made it (default: the login name)")
    add_storage_flags(c)
    c.set_defaults(func=cmd_correct)

    h = sub.add_parser("history", help="nightly runs and checkpoints of a store, with metrics")
    h.add_argument("--store", required=True, help="the nightly store_uri")
    h.add_argument("--plot", help="also write a PNG of J&F per checkpoint over time here")
    h.add_argument("--json", action="store_true", help="print JSON instead of tables")
    add_storage_flags(h)
    h.set_defaults(func=cmd_history)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args, rest = build_parser().parse_known_args(argv)
    if args.command not in ("label", "nightly") and rest:
        build_parser().parse_args(argv)  # let argparse report the unknown arguments
    args.rest = rest
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        return args.func(args)
    except STMLabelError as exc:
        print(f"stm-label {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
