#!/usr/bin/env bash
# Install everything sentinel's demo and tests need on a fresh Debian 12 machine (run as root).
# Idempotent: packages already present are left alone.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(prometheus prometheus-alertmanager prometheus-node-exporter systemd slurm-wlm munge
              victoria-metrics e2fsprogs mount)
# prometheus-node-exporter: the disk collector is checked against it; systemd: systemd-analyze
# verifies the agent unit (PID 1 need not be systemd); slurm-wlm and munge: `sentinel demo`
# and the controller's Slurm actions run a local cluster (sentinel/localstack/slurm.py);
# victoria-metrics: the fleet tests (VictoriaMetrics, vmagent, vmalert as the global store
# past one Prometheus); e2fsprogs (mkfs.ext4) and mount (losetup, mount): the demo's
# slowed-storage rig (sentinel/demo/storage.py; base images usually have both).
missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "install-deps: need root to apt-get install ${missing[*]}" >&2
    exit 2
  fi
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
fi

# Node.js and npm type-check the Grafana dashboards against @grafana/schema.
if ! command -v npm >/dev/null 2>&1; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm
fi
if [ -f tests/typescript/package.json ] && [ ! -d tests/typescript/node_modules ]; then
  (cd tests/typescript && npm ci --no-audit --no-fund --loglevel=error)
fi

# torch 2.13.0 resolves to the local CPU build on the project's machines (see README).
python3 -m pip install -q 'torch==2.13.0'
python3 -m pip install -q -e '.[dev,torch]'
