"""StepStream's bookkeeping against scripted agent answers (a real local HTTP server)."""

from __future__ import annotations

from sentinel.rules.sources import StepStream


def _rec(step: int, rank: int, t: float) -> dict:
    return {"step": step, "rank": rank, "loss": 1.0, "grad_norm": None, "tokens": 1,
            "samples": None, "time": t, "host": "n1"}


def test_a_record_arriving_between_poll_and_probe_is_not_appended_twice(httpserver):
    """The probe read finds a late rank's record; the next poll must not re-add others."""
    first = [_rec(s, r, 100.0 + 2 * s + r) for s in range(2) for r in (0, 1)] + [_rec(2, 0, 104)]
    late = _rec(2, 1, 105.0)
    url = "/api/v1/steps"
    httpserver.expect_ordered_request(url, query_string={"job": "j", "since": "0"}) \
        .respond_with_json({"job": "j", "steps": first})
    # Next poll (since=2): nothing new yet ...
    httpserver.expect_ordered_request(url, query_string={"job": "j", "since": "2"}) \
        .respond_with_json({"job": "j", "steps": [first[-1]]})
    # ... so the stream probes the whole ring, where rank 1's step 2 has just arrived.
    httpserver.expect_ordered_request(url, query_string={"job": "j", "since": "0"}) \
        .respond_with_json({"job": "j", "steps": [*first, late]})
    # A later poll sees both records of step 2 again: neither is new.
    httpserver.expect_ordered_request(url, query_string={"job": "j", "since": "2"}) \
        .respond_with_json({"job": "j", "steps": [first[-1], late]})
    clock = [0.0]
    stream = StepStream(httpserver.url_for(""), "j", monotonic=lambda: clock[0])
    assert stream.poll() == 5
    assert stream.poll() == 1  # the probe's late record
    assert stream.poll() == 0
    assert [(p.step, p.rank) for p in stream.steps] == [
        (0, 0), (0, 1), (1, 0), (1, 1), (2, 0), (2, 1)]
    httpserver.check_assertions()
