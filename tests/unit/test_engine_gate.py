"""The promotion rule and the held-out folder fetch of pipeline.engine.gate (no Ray: the
evaluation tasks are covered by the integration tests)."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.engine.gate import decide, fetch_folder


def test_a_gain_of_at_least_the_margin_promotes() -> None:
    promoted, reason = decide(0.75, 0.5, 25.0)  # exactly representable: gain is exactly 25
    assert promoted
    assert reason.startswith("promoted: ")
    assert decide(0.80, 0.50, 25.0)[0]


def test_a_gain_below_the_margin_does_not_promote() -> None:
    promoted, reason = decide(0.312, 0.310, 0.5)  # +0.2 points
    assert not promoted
    assert reason.startswith("kept the promoted checkpoint: ")
    assert not decide(0.30, 0.31, 0.0)[0]  # worse, with no margin


def test_a_negative_margin_accepts_a_small_loss() -> None:
    assert decide(0.309, 0.310, -0.5)[0]  # -0.1 points >= -0.5
    assert not decide(0.300, 0.310, -0.5)[0]  # -1.0 points


def test_the_reason_carries_both_scores_and_the_gain_in_percent() -> None:
    _, reason = decide(0.3124, 0.2987, 0.5)
    assert "31.24" in reason and "29.87" in reason
    assert "+1.37" in reason  # the gain in J&F points
    assert "+0.50" in reason  # the margin


def test_fetch_folder_returns_a_local_folder_itself(tmp_path: Path) -> None:
    heldout = tmp_path / "heldout"
    (heldout / "JPEGImages").mkdir(parents=True)
    scratch = tmp_path / "scratch"
    assert fetch_folder(str(heldout), None, scratch) == heldout
    assert fetch_folder(f"file://{heldout}", None, scratch) == heldout
    assert not scratch.exists()  # nothing copied


def test_fetch_folder_of_a_missing_folder_raises_file_not_found(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError, match="nowhere"):
        fetch_folder(str(missing), None, tmp_path / "scratch")
    (tmp_path / "a-file").write_text("x")
    with pytest.raises(FileNotFoundError):
        fetch_folder(str(tmp_path / "a-file"), None, tmp_path / "scratch")
