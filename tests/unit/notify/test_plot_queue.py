"""The incident PNG, the message encoding and the outbox on its own."""

from __future__ import annotations

import io
import math
from pathlib import Path

import pytest

from sentinel.notify.message import MAX_SERIES_POINTS, Notification, Series
from sentinel.notify.plot import render_png
from sentinel.notify.queue import Outbox
from sentinel.notify.ratelimit import ChannelLimiter
from tests.support.strictjson import strict_loads


def test_png_is_a_real_image_with_both_panels() -> None:
    from matplotlib.image import imread

    steps = list(range(100))
    s = Series(steps, [3.0] * 50 + [math.nan] + [3.0] * 49, [1000.0] * 100, mark_step=50)
    img = imread(io.BytesIO(render_png(s, "NaN loss")), format="png")
    assert img.shape[:2] == (450, 800)
    # Not blank: many distinct colours (two curves, axes, the marker lines).
    assert len({tuple(px) for px in img.reshape(-1, img.shape[2])[::7]}) > 20


def test_series_round_trips_non_finite_values_and_is_bounded() -> None:
    s = Series([1, 2, 3], [1.0, math.nan, math.inf], [None, 5.0, 6.0], mark_step=2)
    n = Notification("i", "image", "t", series=s)
    row = strict_loads(n.to_json())  # the outbox row: strict JSON, NaN/Inf as strings
    assert row["series"]["loss"] == [1.0, "NaN", "Infinity"]
    back = Notification.from_json(n.to_json()).series
    assert back is not None and back.step == [1, 2, 3] and math.isnan(back.loss[1])
    assert back.loss[2] == math.inf and back.tokens_per_sec == [None, 5.0, 6.0]
    big = Series(list(range(10 * MAX_SERIES_POINTS)), [1.0] * (10 * MAX_SERIES_POINTS))
    assert len(big.step) <= MAX_SERIES_POINTS


def test_bounding_a_long_series_keeps_its_spike_and_its_nan() -> None:
    """The plot of a whole run (no --around-step) must still show the incident."""
    n = 10 * MAX_SERIES_POINTS + 7
    loss = [3.0 - i * 1e-5 for i in range(n)]
    loss[12_345] = 40.0  # a one-step spike between the points a stride would keep
    loss[17_771] = math.nan
    s = Series(list(range(n)), loss, [1000.0] * n, mark_step=12_345)
    assert len(s.step) <= MAX_SERIES_POINTS and len(s.tokens_per_sec) == len(s.step)
    assert s.step == sorted(s.step)
    assert 12_345 in s.step and s.loss[s.step.index(12_345)] == 40.0
    assert 17_771 in s.step and math.isnan(s.loss[s.step.index(17_771)])
    # The ends of the run and the falling trend survive too.
    assert s.step[0] == 0 and s.step[-1] == n - 1


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"kind": "shout"}, "kind: 'shout' is not valid"),
        ({"severity": "meh"}, "severity: 'meh' is not valid"),
        ({"incident": ""}, "incident"),
        ({"kind": "image"}, "needs a series"),
    ],
)
def test_bad_notification_is_refused(kwargs: dict[str, str], message: str) -> None:
    args = {"incident": "i", "kind": "open", "title": "t", **kwargs}
    with pytest.raises(ValueError, match=message):
        Notification(**args)  # type: ignore[arg-type]


def test_outbox_survives_reopening(tmp_path: Path) -> None:
    q = Outbox(tmp_path, max_pending=5)
    for i in range(3):
        n = Notification(f"i{i}", "open", f"t{i}")
        q.put(key=n.key, incident=n.incident, kind=n.kind, title=n.title, body=n.to_json(),
              digest=n.digest(), dedupe_window_s=60)
    first = q.waiting()[0]
    q.mark_sent(first.id, "1.0")
    q.close()
    q2 = Outbox(tmp_path, max_pending=5)
    assert [r.title for r in q2.waiting()] == ["t1", "t2"]
    assert q2.counts()["sent"] == 1 and q2.counts()["total_queued"] == 3


def test_token_bucket() -> None:
    t = [0.0]
    lim = ChannelLimiter(per_minute=60, burst=2, clock=lambda: t[0])
    assert lim.try_take("c") and lim.try_take("c") and not lim.try_take("c")
    assert lim.try_take("other")  # buckets are per channel
    assert lim.wait_s("c") == pytest.approx(1.0)
    t[0] = 1.0
    assert lim.try_take("c") and not lim.try_take("c")
