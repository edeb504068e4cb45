"""A controller running as another user than the job may roll it back: the control group.

Real users and kernel credentials (``setpriv``): the job runs as ``sntl-rb-job`` with
``SENTINEL_CONTROL_GROUP=sntl-rb-run`` in a run directory set up as an operator would
(owned by the job's user, group ``sntl-rb-run``, mode 2770, job umask 007). The requester
runs as ``sntl-rb-ctl``, a member of that group and nothing else, without privileges; it
does what the controller's rollback_skip does, through ``sentinel.train.request``: read
the token, choose and pin the checkpoint, write the request, try to signal (another
user's process: refused) and wait for the job, which finds the request by polling. A
user outside the group cannot read the token; without a control group nobody but the
job's user can; a job whose user is not in the group it names does not start.
"""

from __future__ import annotations

import json
import os
import pwd
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sentinel.train.request import token_path
from tests.support.example_job import EXAMPLE, ROOT, read_log
from tests.support.probe import ensure_group, ensure_user, open_dir
from tests.support.services import stop
from tests.support.users import as_user, need_root, plain_python

pytestmark = [pytest.mark.integration, pytest.mark.slow]

GROUP, JOB_USER, CTL_USER, OTHER = "sntl-rb-run", "sntl-rb-job", "sntl-rb-ctl", "sntl-rb-other"

# What the controller's steps do, as the controller's user: token, target, pin, request,
# signal (refused: another user's process), the job's answer.
REQUESTER = r"""
import json, sys
import sentinel.train.request as rq
run_dir, ckpt = sys.argv[1], sys.argv[2]
out = {}
try:
    token = rq.read_token(run_dir)
except rq.RollbackError as e:
    print(json.dumps({"token_error": str(e)}))
    sys.exit(0)
step = rq.choose_target(ckpt, before_step=60)
rq.pin(ckpt, step, "incident-1")
sub = rq.submit(run_dir, "gpt-tiny", step, [(60, 62)], request_id="incident-1-r1",
                requested_by="sentinel controller", reason="test", signal=False, token=token)
out["request_mode"] = oct(sub.path.stat().st_mode & 0o777)
try:
    rq.signal_job(run_dir)
    out["signal"] = "sent"
except rq.RollbackError as e:
    out["signal"] = str(e)
out["result"] = rq.wait_result(run_dir, "incident-1-r1", 60)
out["pins"] = rq.pins(ckpt)
print(json.dumps(out))
"""

ENSURE = "import sys; from sentinel.train.rollback import ensure_token; " \
         "ensure_token(sys.argv[1], sys.argv[2] or None)"


def _run(user: str, code: str, *args: str) -> subprocess.CompletedProcess[str]:
    argv = as_user(user, ["env", f"PYTHONPATH={ROOT}", plain_python(user), "-c", code, *args])
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)


def _job(run_dir: Path) -> subprocess.Popen[str]:
    """Start the example as the job's user, its control group named, umask 007."""
    argv = ["sh", "-c", 'umask 007; exec "$@"', "sh", "env", f"PYTHONPATH={ROOT}",
            f"SENTINEL_CONTROL_GROUP={GROUP}", "SENTINEL_AGENT_SOCKET=/nonexistent",
            sys.executable, str(EXAMPLE), "--run-dir", str(run_dir), "--config", "tiny",
            "--threads", "1", "--max-steps", "400", "--checkpoint-every", "25",
            "--eval-every", "1000", "--min-step-seconds", "0.1"]
    # The job reads this machine's Python under /root: see as_user's read_all.
    return subprocess.Popen(as_user(JOB_USER, argv, read_all=True), cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@pytest.fixture(scope="module")
def users():
    need_root("the test creates users (useradd) and runs the job and the controller as them "
              "(setpriv)")
    ensure_group(GROUP)
    for u, g in ((JOB_USER, (GROUP,)), (CTL_USER, (GROUP,)), (OTHER, ())):
        ensure_user(u, g)
    return {u: pwd.getpwnam(u) for u in (JOB_USER, CTL_USER, OTHER)}


def test_a_member_of_the_jobs_control_group_rolls_it_back(users):
    base = open_dir()
    run_dir = base / "run"
    run_dir.mkdir()
    os.chown(run_dir, users[JOB_USER].pw_uid, ensure_group(GROUP))
    run_dir.chmod(0o2770)
    job = _job(run_dir)
    try:
        deadline = time.monotonic() + 90
        while not any(e["event"] == "step" and e["step"] >= 70 for e in read_log(run_dir)):
            assert job.poll() is None and time.monotonic() < deadline, job.stdout.read()
            time.sleep(0.2)
        tok = token_path(run_dir).stat()
        assert (stat.S_IMODE(tok.st_mode), tok.st_uid, tok.st_gid) == (
            0o640, users[JOB_USER].pw_uid, ensure_group(GROUP))
        ctl = _run(CTL_USER, REQUESTER, str(run_dir), str(run_dir / "checkpoints"))
        other = _run(OTHER, REQUESTER, str(run_dir), str(run_dir / "checkpoints"))
    finally:
        stop(job)
    assert ctl.returncode == 0, ctl.stderr
    out = json.loads(ctl.stdout)
    assert out["result"]["status"] == "done", out
    assert out["result"]["to_step"] == 50 and out["pins"] == {"incident-1": 50}
    assert "not allowed to signal PID" in out["signal"]  # found by the job's polling
    assert out["request_mode"] == "0o644"
    [rb] = [e for e in read_log(run_dir) if e["event"] == "rollback"]
    assert (rb["to_step"], rb["request"]) == (50, "incident-1-r1")
    # Outside the group: no token, so no request the job would accept.
    assert "cannot read" in json.loads(other.stdout)["token_error"], other.stderr


def test_without_a_control_group_only_the_jobs_user_reads_the_token(users):
    base = open_dir()
    for name, owner in (("private", JOB_USER), ("outsider", OTHER)):
        (base / name).mkdir()
        os.chown(base / name, users[owner].pw_uid, users[owner].pw_gid)
    made = _run(JOB_USER, ENSURE, str(base / "private"), "")
    assert made.returncode == 0, made.stderr
    assert stat.S_IMODE(token_path(base / "private").stat().st_mode) == 0o600
    denied = _run(CTL_USER, REQUESTER, str(base / "private"), str(base / "private"))
    assert "cannot read" in json.loads(denied.stdout)["token_error"]
    # A job may not give its token to a group its user is not in.
    refused = _run(OTHER, ENSURE, str(base / "outsider"), GROUP)
    assert refused.returncode != 0
    assert f"control group '{GROUP}'" in refused.stderr and "not a member" in refused.stderr
