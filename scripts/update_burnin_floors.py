"""Write measured floors into sentinel/burnin/baselines.json from bench/burnin_v2_gpu.py's output.

    python scripts/update_burnin_floors.py OUT/floors_measured.json            # write
    python scripts/update_burnin_floors.py OUT/floors_measured.json --check    # show only

A TFLOPS floor is the slowest GPU's mean over the default burn-in minus
:data:`TFLOPS_MARGIN` (the margin of every shipped floor); a bandwidth floor is the
slowest copy direction's median, or the all-reduce's median bus bandwidth, minus
:data:`BANDWIDTH_MARGIN`. Each entry's ``source`` names the machine, the software and
the figure it came from. Other entries of the file are kept as they are. A CPU dry run's
figures, or links of unknown kind, are refused: they are not floors of any GPU.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "sentinel" / "burnin" / "baselines.json"
# The same 7% below the measured speed as the shipped H100 floor (its source says so).
TFLOPS_MARGIN = 0.07
# Copies and NCCL bus bandwidth vary a few percent from run to run on one machine;
# 10% below the measured figure keeps a healthy node clear of its floor.
BANDWIDTH_MARGIN = 0.10


def _provenance(m: dict[str, Any]) -> str:
    env = m.get("env", {})
    names = ", ".join(sorted(set(env.get("names", [])))) or "?"
    return (f"measured {m.get('measured_at', '?')} on {env.get('gpus', '?')}x {names} "
            f"(driver {env.get('driver', '?')}, torch {env.get('torch', '?')}, CUDA "
            f"{env.get('cuda', '?')}, NCCL {env.get('nccl', '?')}, "
            f"{' '.join(f'{k}={v}' for k, v in sorted(env.get('nccl_env', {}).items()))}) by "
            f"bench/burnin_v2_gpu.py")


def update(table: dict[str, Any], measured: dict[str, Any]) -> list[str]:
    """Write ``measured``'s floors into ``table`` (the baselines file's data); return what changed."""
    if measured.get("env", {}).get("dry_run"):
        raise ValueError("these figures come from a --cpu-dry-run: not floors of any GPU")
    where = _provenance(measured)
    changed = []
    for name, tflops in sorted(measured.get("bf16_tflops", {}).items()):
        floor = round(tflops * (1 - TFLOPS_MARGIN))
        table.setdefault("bf16", {})[name] = {
            "floor_tflops": floor,
            "source": f"{where}: {tflops:.1f} TFLOPS mean (slowest GPU) over the default "
                      f"burn-in; floor = measured x (1 - {TFLOPS_MARGIN})"}
        changed.append(f"bf16 {name}: {floor} TFLOPS")
    for name, kinds in sorted(measured.get("interconnect", {}).items()):
        for kind, fig in sorted(kinds.items()):
            if kind == "unknown":
                raise ValueError(f"{name}: links of unknown kind (no NVML topology): a floor "
                                 f"needs the kind of link it applies to")
            entry = table.setdefault("interconnect", {}).setdefault(name, {}).setdefault(
                kind, {"copy_gbps": None, "allreduce_busbw_gbps": {}})
            parts = []
            if fig.get("copy_gbps"):
                entry["copy_gbps"] = round(fig["copy_gbps"] * (1 - BANDWIDTH_MARGIN))
                parts.append(f"copy {fig['copy_gbps']:.1f} GB/s (slowest direction's median)")
                changed.append(f"{name} {kind} copy: {entry['copy_gbps']} GB/s")
            for n, bus in sorted(fig.get("allreduce_busbw_gbps", {}).items()):
                if bus:
                    entry.setdefault("allreduce_busbw_gbps", {})[str(n)] = round(
                        bus * (1 - BANDWIDTH_MARGIN))
                    parts.append(f"{n}-GPU all-reduce bus bandwidth {bus:.1f} GB/s (median)")
                    changed.append(f"{name} {kind} all-reduce x{n}: "
                                   f"{entry['allreduce_busbw_gbps'][str(n)]} GB/s")
            if parts:
                entry["source"] = (f"{where}: {'; '.join(parts)}; floor = measured x "
                                   f"(1 - {BANDWIDTH_MARGIN})")
    return changed


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("measured", help="floors_measured.json (or burnin_v2.json) from the bench")
    ap.add_argument("--baselines", default=str(SHIPPED), help="the file to update")
    ap.add_argument("--check", action="store_true", help="print the changes, write nothing")
    args = ap.parse_args(argv)
    try:
        measured = json.loads(Path(args.measured).read_text(encoding="utf-8"))
        measured = measured.get("floors_measured", measured)
        path = Path(args.baselines)
        table = json.loads(path.read_text(encoding="utf-8"))
        changed = update(table, measured)
    except (OSError, ValueError) as e:
        print(f"update_burnin_floors: {e}", file=sys.stderr)
        return 2
    if not changed:
        print("update_burnin_floors: no measured figures in the file", file=sys.stderr)
        return 1
    print("\n".join(changed))
    if not args.check:
        path.write_text(json.dumps(table, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
