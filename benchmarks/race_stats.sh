#!/usr/bin/env bash
# How reliably the oracle tells the frontends apart: N runs (default 20) of each scenario, each a fresh guest on
# one nested host booted for the scenario. Prints each run's verdict and race-hit count, then the tallies, then
# what a round cost (benchmarks/round_cost.py). Figures, not a test: expect legacy-race to FAIL (almost) every
# time and the other two to PASS every time.
#   benchmarks/race_stats.sh [N] [CONFIG...]     e.g. benchmarks/race_stats.sh 20 quiet-point upstream-quiet-point
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
    out="runs/stats-$cfg-$(date +%Y%m%d-%H%M%S)"
    "$py" -m harness run "configs/$cfg.yaml" --repeat "$n" --output "$out" | grep -E "^verdict|runs:"
    "$py" benchmarks/round_cost.py "$out"
done
