"""Label a video corpus: ``ray job submit -- python jobs/label_corpus.py --config job.yaml``.

With no arguments it labels a small demo corpus that the package generates, into ./out/label-demo.
Exit code 0 when the run is committed, 1 when it could not complete, 2 for a bad config or a
store that does not answer (checked before Ray starts: ``pipeline.preflight``), 130 when
interrupted (Ctrl-C): finished shards stay committed and the same command resumes the run.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from schemas.label_job import LabelJobConfig

if __package__ in (None, ""):  # run as a script (ray job submit): make the repo importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

DEMO_OUT = Path("out/label-demo")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="label_corpus", description=__doc__)
    parser.add_argument("--config", help="LabelJobConfig as YAML or JSON (default: the demo)")
    parser.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a setting")
    parser.add_argument("--address", help="Ray cluster to join (default: RAY_ADDRESS or local)")
    parser.add_argument(
        "--json", action="store_true", help="print the run summary as JSON instead of text"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    from pipeline.corpus_job import JobConfigError, run_label_job
    from pipeline.engine.run_inputs import resolve_label_inputs
    from pipeline.preflight import PreflightError, check_label_job
    from pipeline.progress import ProgressDisplay, format_summary
    from pipeline.ray_connect import connect
    from schemas.common import load_config
    from schemas.label_job import LabelJobConfig

    try:
        base = None if args.config else demo_settings()
        config = load_config(LabelJobConfig, args.config, args.set or [], base)
    except (ValueError, FileNotFoundError) as exc:  # ConfigError is a ValueError
        print(f"label_corpus: bad config: {exc}", file=sys.stderr)
        return 2

    try:
        check_label_job(config)  # every store answers, in seconds, before anything is written
        inputs = resolve_label_inputs(config)  # the checkpoint fails fast, before Ray starts
        connect(args.address)
        with ProgressDisplay() as progress:  # a bar on a terminal, plain lines in a log
            summary = run_label_job(config, progress, inputs.checkpoint, inputs.corrections)
    except (JobConfigError, PreflightError) as exc:
        print(f"label_corpus: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return interrupted(config)
    print(json.dumps(asdict(summary), indent=2) if args.json else format_summary(asdict(summary)))
    if not args.config:
        print(f"\nlabeled the demo corpus: see {DEMO_OUT / 'output'}", file=sys.stderr)
    return 0 if summary.status == "succeeded" else 1


def interrupted(config: LabelJobConfig) -> int:
    """Ctrl-C: one line naming what is committed and the command that resumes; exit code 130."""
    from pipeline.corpus_job import committed_shards
    from pipeline.progress import command_line, interrupted_line

    try:
        committed = committed_shards(config)
    except Exception:  # noqa: BLE001 - the line still gives the command that resumes
        committed = None
    command = command_line(sys.orig_argv)
    print(interrupted_line(config.run_id, config.output_uri, committed, command), file=sys.stderr)
    return 130


def demo_settings() -> dict:
    from pipeline.demo_corpus import make_demo_corpus

    corpus = make_demo_corpus(DEMO_OUT / "corpus")
    return {
        "corpus_uri": str(corpus.resolve()),
        "output_uri": str((DEMO_OUT / "output").resolve()),
        "run_id": "demo",
        "videos_per_shard": 1,  # one shard per clip, so every local worker has work
    }


if __name__ == "__main__":
    sys.exit(main())
