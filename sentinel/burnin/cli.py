"""``sentinel burnin``: stress every GPU and the links between them, judge each GPU, exit 0
(all OK), 1 (a GPU or a link failed), 2.

Exit code 2 means it could not run: bad flags or config, no torch/CUDA/NVIDIA GPU, fp8
asked on a GPU without it. The message says which and what to do.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from sentinel.burnin.config import (
    DEFAULT_DURATION_S,
    BurninConfig,
    BurninConfigError,
    parse_gpu_list,
)
from sentinel.burnin.report import EXIT_CANNOT_RUN


def register(subparsers: Any) -> None:
    """Add the ``burnin`` subcommand."""
    p = subparsers.add_parser(
        "burnin",
        help="stress-test every GPU (bf16/fp8 matmuls, memory test) and judge each",
        description="Run tensor-core matmuls on every GPU at once, sample NVML, check "
                    "results and memory, time copies between every pair of GPUs and an NCCL "
                    "all-reduce, and give each GPU a verdict: OK, LOW_FLOPS, THROTTLED, "
                    "WRONG_RESULTS, MEMORY_ERRORS, NO_WORK or LOW_BANDWIDTH (a link it "
                    "shares is slow). Exit 0 when every GPU is OK, 1 when one failed, 2 when "
                    "the burn-in could not run.",
    )
    p.add_argument("--config", help="YAML config file (section burnin:)")
    p.add_argument("--gpus", help="CUDA device indices to test, e.g. 0,3 (default: all)")
    p.add_argument("--duration", type=float,
                   help=f"measured seconds (default {DEFAULT_DURATION_S:g})")
    p.add_argument("--warmup", type=float, help="longest uncounted warm-up after the memory "
                   "test (default 5; with --warmup-mode fixed: exactly this long)")
    p.add_argument("--warmup-mode", choices=["steady", "fixed"],
                   help="steady (default): memory test beside the first matmuls, measure once "
                   "speed and clocks are steady; fixed: memory test first, then --warmup "
                   "seconds (v1)")
    p.add_argument("--dtype", choices=["bf16", "fp8"], help="matmul inputs (default bf16; "
                   "fp8 needs compute capability 9.0+)")
    p.add_argument("--size", type=int, help="matrix size N (default 8192)")
    p.add_argument("--tolerance", type=float,
                   help="fraction below the node's best GPU that is LOW_FLOPS (default 0.10)")
    p.add_argument("--interconnect", action=argparse.BooleanOptionalAction, default=None,
                   help="time copies between every pair of GPUs and an NCCL all-reduce over "
                   "all of them (default on; needs two or more GPUs)")
    p.add_argument("--bandwidth-tolerance", type=float,
                   help="fraction below the node's best GPU pair over the same kind of link "
                   "that is LOW_BANDWIDTH (default 0.15)")
    p.add_argument("--baseline-tflops", type=float,
                   help="TFLOPS floor for every GPU (overrides the per-model table)")
    p.add_argument("--baselines", help="file of per-model TFLOPS floors (YAML or JSON) "
                   "replacing the shipped table")
    p.add_argument("--memtest-seconds", type=float,
                   help="memory-test time budget per GPU (default 3; 0 disables)")
    p.add_argument("--memtest-fraction", type=float,
                   help="fraction of free memory to test (default 0.85; 0 disables)")
    p.add_argument("--check-every", type=int, help="check results every N matmuls (default 128)")
    p.add_argument("--json", action="store_true",
                   help="print JSON lines (start, progress, result per GPU, verdict) on stdout")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="progress bar on stderr (default: only when stderr is a terminal)")
    p.add_argument("--textfile", help="write sentinel_burnin_* metrics to this file "
                   "(atomically; point it into the agent's --textfile-dir, name *.prom)")
    p.set_defaults(func=run)


def _load(args: argparse.Namespace) -> BurninConfig:
    from sentinel.config import load_section, read_yaml_file  # noqa: PLC0415 - needs PyYAML

    file_data = read_yaml_file(args.config) if args.config else None
    overrides = {
        "gpus": parse_gpu_list(args.gpus) if args.gpus is not None else None,
        "duration": args.duration,
        "warmup": args.warmup,
        "warmup_mode": args.warmup_mode,
        "dtype": args.dtype,
        "size": args.size,
        "tolerance": args.tolerance,
        "interconnect": args.interconnect,
        "bandwidth_tolerance": args.bandwidth_tolerance,
        "baseline_tflops": args.baseline_tflops,
        "baselines_file": args.baselines,
        "memtest_seconds": args.memtest_seconds,
        "memtest_fraction": args.memtest_fraction,
        "check_every": args.check_every,
        "textfile": args.textfile,
    }
    return load_section(BurninConfig, "burnin", file_data=file_data, overrides=overrides)


def run(args: argparse.Namespace) -> int:
    """Run the burn-in from parsed arguments and return the exit code."""
    from sentinel.config import ConfigError  # noqa: PLC0415

    try:
        cfg = _load(args)
    except (ConfigError, BurninConfigError) as e:
        print(f"sentinel burnin: bad configuration: {e}", file=sys.stderr)
        return EXIT_CANNOT_RUN
    from sentinel.burnin.api import BurninUnavailable, run_burnin  # noqa: PLC0415
    from sentinel.burnin.report import (  # noqa: PLC0415
        ProgressBar,
        format_table,
        json_line,
        result_events,
    )

    show_bar = args.progress if args.progress is not None else sys.stderr.isatty()
    bar = ProgressBar(sys.stderr, cfg.duration) if show_bar else None

    def on_event(e: dict[str, Any]) -> None:
        if args.json:
            print(json_line(e), flush=True)
        if bar is not None:
            bar.update(e)

    try:
        report = run_burnin(cfg, on_event)
    except BurninConfigError as e:
        print(f"sentinel burnin: bad configuration: {e}", file=sys.stderr)
        return EXIT_CANNOT_RUN
    except BurninUnavailable as e:
        print(f"sentinel burnin: cannot run: {e}", file=sys.stderr)
        return EXIT_CANNOT_RUN
    finally:
        if bar is not None:
            bar.close()
    if args.json:
        for line in result_events(report):
            print(json_line(line), flush=True)
    else:
        print(format_table(report))
    if report.textfile_error:
        print(f"sentinel burnin: textfile {report.textfile_error}", file=sys.stderr)
    elif cfg.textfile:
        print(f"sentinel burnin: wrote {cfg.textfile}", file=sys.stderr)
    return report.exit_code
