"""StepStream's bookkeeping against scripted agent answers (a real local HTTP server)."""

from __future__ import annotations

import pytest

from sentinel.rules.sources import SourceError, StepStream


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


def test_batch_indices_reach_the_step_points(httpserver):
    recs = [{**_rec(0, 0, 100.0), "batch": 0}, {**_rec(1, 0, 101.0), "batch": 3},
            {**_rec(2, 0, 102.0), "batch": None}, _rec(3, 0, 103.0)]  # older agents: no key
    httpserver.expect_request("/api/v1/steps").respond_with_json({"job": "j", "steps": recs})
    stream = StepStream(httpserver.url_for(""), "j")
    assert stream.poll() == 4
    assert [p.batch for p in stream.steps] == [0, 3, None, None]


@pytest.mark.parametrize("bad", [-1, 2.5, "7", True])
def test_a_record_with_a_bad_batch_is_a_source_error(httpserver, bad):
    httpserver.expect_request("/api/v1/steps").respond_with_json(
        {"job": "j", "steps": [{**_rec(0, 0, 100.0), "batch": bad}]})
    with pytest.raises(SourceError, match=r"bad step record .*is not a batch index"):
        StepStream(httpserver.url_for(""), "j").poll()


def test_the_stream_follows_the_agents_pages(httpserver):
    recs = [_rec(s, 0, 100.0 + s) for s in range(5)]
    url = "/api/v1/steps"
    httpserver.expect_ordered_request(url, query_string={"job": "j", "since": "0"}) \
        .respond_with_json({"job": "j", "steps": recs[:2], "next": "1.0.1"})
    httpserver.expect_ordered_request(
        url, query_string={"job": "j", "since": "0", "cursor": "1.0.1"}) \
        .respond_with_json({"job": "j", "steps": recs[2:4], "next": "3.0.3"})
    httpserver.expect_ordered_request(
        url, query_string={"job": "j", "since": "0", "cursor": "3.0.3"}) \
        .respond_with_json({"job": "j", "steps": recs[4:], "next": None})
    stream = StepStream(httpserver.url_for(""), "j")
    assert stream.poll() == 5
    assert [p.step for p in stream.steps] == [0, 1, 2, 3, 4]
    httpserver.check_assertions()


def test_an_agent_that_never_stops_paging_is_a_source_error(httpserver, monkeypatch):
    import sentinel.rules.sources as sources

    monkeypatch.setattr(sources, "MAX_PAGES", 3)
    httpserver.expect_request("/api/v1/steps").respond_with_json(
        {"job": "j", "steps": [_rec(0, 0, 100.0)], "next": "0.0.0"})
    with pytest.raises(SourceError, match="still more steps after 3 pages"):
        StepStream(httpserver.url_for(""), "j").poll()


@pytest.mark.parametrize("body", [{"steps": {"a": 1}}, {"steps": [], "next": 5}])
def test_a_body_that_is_not_a_step_page_is_a_source_error(httpserver, body):
    httpserver.expect_request("/api/v1/steps").respond_with_json(body)
    with pytest.raises(SourceError, match="not a step page"):
        StepStream(httpserver.url_for(""), "j").poll()


def test_an_abandoned_timeline_is_never_read_again(httpserver):
    """Rollback, then a requeue: the old timeline's later steps stay in the agent's ring.

    After the rollback (steps 10..15 again) the job is requeued and reports nothing for a
    while: polls then find only the first timeline's records of steps 15..20, which the
    stream must not take for news (the loss-spike detector would see that timeline's
    spike again after the rerun's steps). Then the requeued run reports from step 10.
    """
    from werkzeug import Response

    ring: list[dict] = [_rec(s, 0, 100.0 + s) for s in range(21)]

    def agent(request):
        since = int(request.args.get("since", "0"))
        steps = sorted((r for r in ring if r["step"] >= since),
                       key=lambda r: (r["step"], r["rank"], r["time"]))
        import json

        return Response(json.dumps({"job": "j", "steps": steps}), mimetype="application/json")

    httpserver.expect_request("/api/v1/steps").respond_with_handler(agent)
    clock = [0.0]
    stream = StepStream(httpserver.url_for(""), "j", monotonic=lambda: clock[0])
    assert stream.poll() == 21
    ring += [_rec(s, 0, 200.0 + s) for s in range(10, 16)]  # rolled back to 10
    assert stream.poll() == 6
    for _ in range(4):  # requeued: silent; the probe interval passes between polls
        clock[0] += 120.0
        assert stream.poll() == 0
    ring += [_rec(s, 0, 300.0 + s) for s in range(10, 31)]  # the requeued run
    clock[0] += 120.0
    assert stream.poll() == 21
    clock[0] += 120.0
    assert stream.poll() == 0
    got = [(p.step, int(p.time) // 100) for p in stream.steps]
    assert got == ([(s, 1) for s in range(21)] + [(s, 2) for s in range(10, 16)]
                   + [(s, 3) for s in range(10, 31)])
