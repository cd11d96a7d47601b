#!/usr/bin/env bash
# How often each frontend misses an update under one stress: every scenario runs again and again for TIME (each run a
# fresh guest; all scenarios on one nested host, one after the other), then the harness prints, per scenario, the
# statistics of `xenfb-harness run --duration` (verdicts, detection rate with its 95% Wilson interval, rounds with
# misses, missed pages and race hits per minute of stress with 95% Poisson intervals, time to the first FAIL, the
# cross-check against the module's race hits) and writes them to OUTPUT/summary.json; then what a round cost
# (benchmarks/round_cost.py). Figures, not a test.
#   benchmarks/race_stats.sh [TIME] [CONFIG...]     TIME as 90s, 30m, 2h (default 10m); CONFIG names in configs/
# Default: the natural race (window 0) and its controls, the same stress on the fixed and the upstream frontend:
#   benchmarks/race_stats.sh 30m       # expect legacy-natural to FAIL, the other two never
#   benchmarks/race_stats.sh 5m legacy-race legacy-fixed-race upstream-sparse   # the widened window instead
set -u
cd "$(dirname "$0")/.."
time_budget=${1:-10m}
shift || true
configs=("$@")
[ ${#configs[@]} -gt 0 ] || configs=(legacy-natural legacy-fixed-natural upstream-natural)
py=.venv/bin/python
[ -x "$py" ] || py=python3
out="runs/stats-$(date +%Y%m%d-%H%M%S)"
paths=()
for cfg in "${configs[@]}"; do paths+=("configs/$cfg.yaml"); done
echo "== ${configs[*]}: $time_budget each, into $out (statistics at the end)"
"$py" -m xenfb_harness run "${paths[@]}" --duration "$time_budget" --output "$out"
for cfg in "${configs[@]}"; do
    dir=$out
    [ ${#configs[@]} -eq 1 ] || dir=$(ls -d "$out"/[0-9][0-9]-"$cfg" 2>/dev/null | head -1)
    [ -d "$dir" ] || continue  # it never ran (an interrupt, a bad config)
    echo "-- $cfg: what a round cost"
    "$py" benchmarks/round_cost.py "$dir"
done
