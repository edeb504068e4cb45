import json
import signal

import pytest
import torch

from sentinel.cli import main
from sentinel.train.checkpoint import CheckpointStore
from sentinel.train.request import REQUEST_DIR, RollbackRequest, read_token, sign, write_pid_file
from sentinel.train.rollback import ensure_token
from sentinel.train.skipplan import SkipPlan


@pytest.fixture
def run_dir(tmp_path):
    store = CheckpointStore(tmp_path / "checkpoints", keep=5)
    for s in (0, 50, 100):
        store.save(s, {"w": torch.zeros(4)})
    ensure_token(tmp_path)
    return tmp_path


def _cli(run_dir, *extra):
    return main(["rollback", "--job", "j", "--run-dir", str(run_dir), *extra])


def _only_request(run_dir):
    (path,) = (run_dir / REQUEST_DIR).glob("*.json")
    return json.loads(path.read_text())


def test_writes_a_signed_request_for_the_newest_verified_before_step(run_dir, capsys):
    f = run_dir / "checkpoints" / "step_000000100.pt"
    f.write_bytes(f.read_bytes()[:-10])  # newest one damaged
    rc = _cli(run_dir, "--before-step", "120", "--skip", "110:113", "--skip", "200:300",
              "--no-signal", "--wait", "0", "--reason", "spike at 110")
    assert rc == 0
    raw = _only_request(run_dir)
    req = RollbackRequest.from_json(raw["request"])
    assert (req.job, req.to_step, req.skip, req.reason) == ("j", 50, [(110, 113), (200, 300)],
                                                            "spike at 110")
    token = (run_dir / ".sentinel" / "token").read_text().strip().encode()
    assert raw["signature"] == sign(req, token)
    assert json.loads(capsys.readouterr().out)["status"] == "pending"


@pytest.mark.parametrize(
    ("args", "rc", "message"),
    [
        (["--to-step", "50", "--skip", "9:3"], 2, "END must be greater than START"),
        (["--to-step", "50", "--skip=-1:3"], 2, "negative batch index"),
        (["--to-step", "50", "--skip", "10:20", "--skip", "15:25"], 2, "overlaps"),
        (["--to-step", "60"], 1, "no checkpoint for step 60"),
        (["--before-step", "-5"], 1, "no verified checkpoint at or before step -5"),
    ],
)
def test_bad_requests_fail_with_a_reason(run_dir, capsys, args, rc, message):
    assert _cli(run_dir, *args) == rc
    assert message in capsys.readouterr().err


def test_overlap_with_the_existing_plan_is_refused(run_dir, capsys):
    SkipPlan(run_dir).add([(100, 150)], added_by="x", reason="y")
    assert _cli(run_dir, "--to-step", "50", "--skip", "140:160", "--no-signal") == 2
    assert "overlaps 100:150" in capsys.readouterr().err


def test_needs_the_token(tmp_path, capsys):
    CheckpointStore(tmp_path / "checkpoints").save(1, {"w": torch.zeros(1)})
    assert _cli(tmp_path, "--to-step", "1", "--no-signal") == 1
    assert "no run token" in capsys.readouterr().err


def test_signals_the_recorded_pid_and_times_out_without_an_answer(run_dir, capsys):
    got = []
    old = signal.signal(signal.SIGUSR1, lambda *a: got.append(a[0]))
    try:
        write_pid_file(run_dir, 0, read_token(run_dir))
        assert _cli(run_dir, "--to-step", "50", "--wait", "0.3") == 1
    finally:
        signal.signal(signal.SIGUSR1, old)
    assert got == [signal.SIGUSR1]
    err = capsys.readouterr().err
    assert "no answer from the job within 0.3 s" in err and "still pending" in err


def test_a_job_it_cannot_signal_is_left_to_find_the_request(run_dir, capsys):
    assert _cli(run_dir, "--to-step", "50", "--wait", "0.2", "--request-id", "r-7") == 1
    err = capsys.readouterr().err
    assert "no rank of the job on this host can be signalled" in err and "polls" in err
    assert "--request-id r-7 --wait 600" in err  # how to wait for it, not ask again
    assert (run_dir / REQUEST_DIR / "r-7.json").exists()
