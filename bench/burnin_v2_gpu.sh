#!/usr/bin/env bash
# Issue 16 on the GPU machine in one command: bench/burnin_v2_gpu.py, then the GPU tests.
#
#   bash bench/burnin_v2_gpu.sh [all|bench|tests]     (repository root; default all)
#
# Writes to $OUT (default ./out): the bench's burnin_v2.json, burnin_v2_summary.txt,
# floors_measured.json and reports/, plus bench.log and gpu_tests.log. About 6 min on
# one GPU, 7-8 on two (the bench drops its later sections past --budget-s). The
# multi-GPU tests skip on one GPU, saying they need two. NVLink SHARP stays off
# (NCCL_NVLS_ENABLE=0) unless the environment says otherwise.
set -u
what="${1:-all}"
OUT="${OUT:-out}"
mkdir -p "$OUT"
export NCCL_NVLS_ENABLE="${NCCL_NVLS_ENABLE:-0}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
bench_rc=- tests_rc=-
if [ "$what" = all ] || [ "$what" = bench ]; then
    timeout 390 python bench/burnin_v2_gpu.py --out "$OUT" --budget-s 350 2>&1 | tee "$OUT/bench.log"
    bench_rc=${PIPESTATUS[0]}
fi
if [ "$what" = all ] || [ "$what" = tests ]; then
    timeout 200 python -m pytest -m gpu tests/gpu/test_burnin_gpu.py -v -rs -p no:cacheprovider \
        2>&1 | tee "$OUT/gpu_tests.log"
    tests_rc=${PIPESTATUS[0]}
fi
echo "burnin_v2_gpu.sh: bench rc=$bench_rc, GPU tests rc=$tests_rc (124: timed out)" \
    | tee -a "$OUT/bench.log"
[ "$bench_rc" = 0 ] || [ "$bench_rc" = - ] || exit 1
[ "$tests_rc" = 0 ] || [ "$tests_rc" = - ] || exit 1
