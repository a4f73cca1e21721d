"""The times engines put before their log lines (``timestamps=true``), as the
follow of a replica's output reads them: to the nanosecond (Docker), to the second
(Podman), with a zone's offset, or none."""

from __future__ import annotations

from nefos.services.api_usage import stamped

EPOCH_2026 = 1_767_225_600  # 2026-01-01T00:00:00Z


def test_nanoseconds_seconds_offsets_and_lines_without_a_time() -> None:
    assert stamped("2026-01-01T00:00:00.123456789Z GET /x 200") == (
        EPOCH_2026 * 10**9 + 123_456_789,
        "2026-01-01T00:00:00.123456789Z",
        "GET /x 200",
    )
    assert stamped("2026-01-01T00:00:01Z started") == (
        (EPOCH_2026 + 1) * 10**9,
        "2026-01-01T00:00:01Z",
        "started",
    )
    # An offset: the same instant as UTC's.
    at, _, line = stamped("2026-01-01T01:00:00.5+01:00 x") or (0, "", "")
    assert (at, line) == (EPOCH_2026 * 10**9 + 500_000_000, "x")
    # A line keeps its own spaces; an empty line is a line.
    assert stamped("2026-01-01T00:00:00Z  two  spaces ")[2] == " two  spaces "  # type: ignore[index]
    assert stamped("2026-01-01T00:00:00Z ")[2] == ""  # type: ignore[index]
    for bare in ("no time here", "2026-01-01 00:00:00Z x", "2026-13-01T00:00:00Z x", ""):
        assert stamped(bare) is None
