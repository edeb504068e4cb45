"""Capture a passing and a failing burn-in of a real GPU as `sentinel burnin --json` prints it.

Run on a machine with a GPU (the device tool): python scripts/capture_burnin_reports.py OUTDIR.
For each of ``pass`` (the shipped floors) and ``fail`` (a 2000 TFLOPS floor no GPU of
today reaches, so the same healthy GPU is judged LOW_FLOPS) it writes
``burnin-<name>.jsonl``: the JSON lines ``sentinel burnin --json`` prints (the same
``json_line``/``result_events`` calls) and ``burnin-<name>.report.json``: the whole
report (``BurninReport.to_dict``). sentinel/burnin/replay.py replays them (the copies in sentinel/burnin/replays/).
"""

import json
import sys
from pathlib import Path

from sentinel.burnin.api import run_burnin
from sentinel.burnin.config import BurninConfig
from sentinel.burnin.report import json_line, result_events

out = Path(sys.argv[1])
out.mkdir(parents=True, exist_ok=True)
for name, floor in (("pass", None), ("fail", 2000.0)):
    with open(out / f"burnin-{name}.jsonl", "w") as f:
        rep = run_burnin(BurninConfig(duration=20, baseline_tflops=floor),
                         lambda e, f=f: f.write(json_line(e) + "\n"))
        for line in result_events(rep):
            f.write(json_line(line) + "\n")
    (out / f"burnin-{name}.report.json").write_text(json.dumps(rep.to_dict(), indent=1))
    print(name, rep.ok, [v.verdict.value for v in rep.verdicts])
