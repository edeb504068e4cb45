#!/usr/bin/env bash
# Run a batch of GPU tests and benchmarks on the device machine; everything lands in
# $OUT/results.tgz plus $OUT/log.txt. Usage: bash scripts/gpu_batch.sh PART [PART...]
# Parts: capture nvml agent burnin train
set -u
export PYTHONUNBUFFERED=1
R=/tmp/results; mkdir -p $R
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD
fi
for part in "$@"; do
  echo "===== $part $(date +%T)"
  case $part in
    capture) timeout 120 python3 scripts/capture_gpu_fixtures.py $R/capture ;;
    nvml) timeout 60 python3 bench/nvml_calls.py --out $R/nvml ;;
    agent)
      SENTINEL_GPU_OUT=$R/agent timeout 180 python3 -m pytest -p no:cacheprovider -m gpu tests/gpu/test_agent_gpu.py -v 2>&1 | tail -25
      timeout 300 python3 bench/agent_overhead.py --out $R/agent 2>&1 | tail -30 ;;
    burnin)
      timeout 200 python3 -m pytest -p no:cacheprovider -m gpu tests/gpu/test_burnin_gpu.py -v -s 2>&1 | tail -40
      timeout 300 python3 bench/burnin_gpu.py --out $R/burnin 2>&1 | tail -40
      timeout 120 python3 -m sentinel burnin --duration 15 --json --textfile $R/burnin/burnin.prom > $R/burnin/cli.jsonl 2>$R/burnin/cli.err; echo "burnin cli rc=$?"; tail -5 $R/burnin/cli.err ;;
    train)
      timeout 150 python3 -m pytest -p no:cacheprovider -m gpu tests/gpu/test_train_gpu.py -v 2>&1 | tail -20
      timeout 330 python3 bench/train_gpu.py --no-curves --out $R/train 2>&1 | tail -40 ;;
    trainbench) timeout 300 python3 bench/train_gpu.py --no-curves --repeats 2 --out $R/train 2>&1 | tail -30 ;;
    traintest) timeout 200 python3 -m pytest -p no:cacheprovider -m gpu tests/gpu/test_train_gpu.py -v 2>&1 | tail -20 ;;
    curves) timeout 200 python3 -m bench.detectors.record_real --config small --steps 1000 --device cuda --out $R/real 2>&1 | tail -20 ;;
    *) echo "unknown part $part" ;;
  esac
done
# Only results, never checkpoints (the 16 MiB limit on returned files).
(cd /tmp && find results -type f -size -4M ! -path '*/runs/*' ! -path '*recovery_run*' -print0 \
  | tar czf $OUT/results.tgz --null -T -)
