"""One night of the data engine: ``ray job submit -- python jobs/nightly.py --config nightly.yaml``.

Labels what is new or changed with the promoted checkpoint, selects training data, fine-tunes on
Ray Train, gates the candidate on held-out J&F and promotes it only if it is better. Submitting
the same ``run_id`` again resumes a run that died and is a no-op for a finished one.
Exit code 0 when the run succeeded (promoted or not), 1 when it failed, 2 for a bad config or a
store that does not answer (checked before Ray starts: ``pipeline.preflight``), 3 when another
nightly run holds the store's lock.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

if __package__ in (None, ""):  # run as a script (ray job submit): make the repo importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nightly", description=__doc__)
    parser.add_argument("--config", required=True, help="NightlyConfig as YAML or JSON")
    parser.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a setting")
    parser.add_argument("--address", help="Ray cluster to join (default: RAY_ADDRESS or local)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    from pipeline.engine.lock import LockHeldError
    from pipeline.engine.nightly import run_nightly
    from pipeline.preflight import PreflightError, check_nightly
    from pipeline.progress import print_progress
    from pipeline.ray_connect import connect
    from schemas.common import load_config
    from schemas.nightly import NightlyConfig
    from stm_core.errors import STMLabelError

    try:
        config = load_config(NightlyConfig, args.config, args.set or [])
    except (ValueError, FileNotFoundError) as exc:  # ConfigError is a ValueError
        print(f"nightly: bad config: {exc}", file=sys.stderr)
        return 2
    try:
        check_nightly(config)  # every store answers, in seconds, before Ray starts
    except PreflightError as exc:
        print(f"nightly: {exc}", file=sys.stderr)
        return 2
    connect(args.address)
    try:
        record = run_nightly(config, progress=print_progress)
    except LockHeldError as exc:
        print(f"nightly: {exc}", file=sys.stderr)
        return 3
    except STMLabelError as exc:
        print(f"nightly: failed: {exc}", file=sys.stderr)
        return 1
    print(
        json.dumps(record.model_dump(mode="json", exclude={"config", "label_video_ids"}), indent=2)
    )
    return 0 if record.status == "succeeded" else 1


if __name__ == "__main__":
    sys.exit(main())
