#!/usr/bin/env bash
# How reliably the oracle tells the frontends apart: N runs (default 20) of each scenario, each booting afresh.
# Prints each run's verdict and race-hit count, then the tallies. Figures, not a test: expect legacy-race to
# FAIL (almost) every time and the other two to PASS every time. About 90 s per legacy run on 2 cores (TCG).
#   benchmarks/race_stats.sh [N] [CONFIG...]     e.g. benchmarks/race_stats.sh 5 legacy-natural
set -u
cd "$(dirname "$0")/.."
n=${1:-20}
shift || true
configs=("$@")
[ ${#configs[@]} -gt 0 ] || configs=(legacy-race legacy-fixed-race upstream-sparse)
py=.venv/bin/python
[ -x "$py" ] || py=python3
for cfg in "${configs[@]}"; do
    echo "== $cfg: $n runs"
    "$py" -m harness run "configs/$cfg.yaml" --repeat "$n" --output "runs/stats-$cfg-$(date +%Y%m%d-%H%M%S)"
done
