"""sentinel.ratelog: one line per key and interval, with the count left out."""

from __future__ import annotations

import logging

from sentinel.ratelog import LogLimiter


def test_first_line_at_once_then_one_per_interval_with_the_count(caplog):
    clock = [0.0]
    lim = LogLimiter(logging.getLogger("t"), interval=60.0, monotonic=lambda: clock[0])
    with caplog.at_level(logging.WARNING, logger="t"):
        assert lim.log(logging.WARNING, "a", "bad %s", "x")
        for _ in range(5):
            assert not lim.log(logging.WARNING, "a", "bad %s", "x")
        assert lim.log(logging.WARNING, "b", "other")  # another key is not held back
        clock[0] = 61.0
        assert lim.log(logging.WARNING, "a", "bad %s", "y")
    assert [r.getMessage() for r in caplog.records] == [
        "bad x", "other", "bad y (and 5 more like it since the last such line)"]
