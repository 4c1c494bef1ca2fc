#!/usr/bin/env bash
# Prints criterion's latest results (target/criterion/*/*/new/estimates.json, written by
# `cargo bench`) as a Markdown table: the median per iteration with its 95% confidence interval,
# and per input where the benchmark declares a throughput. Used by bench/run.sh for RESULTS.md.
#
# Usage: bash bench/criterion-summary.sh [CRITERION_DIR]   (default: target/criterion)
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
DIR="${1:-${CARGO_TARGET_DIR:-target}/criterion}"
[ -d "$DIR" ] || {
    echo "criterion-summary: $DIR does not exist; run cargo bench first" >&2
    exit 1
}
command -v jq >/dev/null || {
    echo "criterion-summary: jq is required" >&2
    exit 1
}

# Nanoseconds with a readable unit.
human() {
    awk -v ns="$1" 'BEGIN {
        if (ns >= 1e6) printf "%.2f ms", ns / 1e6
        else if (ns >= 1e3) printf "%.2f µs", ns / 1e3
        else printf "%.1f ns", ns }'
}

mapfile -t files < <(find "$DIR" -path '*/new/estimates.json' | sort)
[ "${#files[@]}" -gt 0 ] || {
    echo "criterion-summary: no results under $DIR" >&2
    exit 1
}

newest=$(stat -c %Y "${files[@]}" | sort -n | tail -n 1)
echo "Medians from \`cargo bench --bench hot_path\` (benches/hot_path.rs), last run $(date -u -d "@$newest" '+%Y-%m-%d %H:%M UTC')."
echo "\"per input\" divides by the inputs per iteration (the parse benchmarks run a batch of 1,024 seeded inputs)."
echo
echo '| benchmark | median per iteration | 95% CI of the median | inputs per iteration | median per input |'
echo '|---|--:|--:|--:|--:|'
for estimates in "${files[@]}"; do
    dir=$(dirname "$(dirname "$estimates")")
    id=$(jq -r .full_id "$dir/new/benchmark.json")
    elements=$(jq -r '.throughput.Elements // .throughput.Bytes // 1' "$dir/new/benchmark.json")
    read -r median low high < <(jq -r '.median | "\(.point_estimate) \(.confidence_interval.lower_bound) \(.confidence_interval.upper_bound)"' "$estimates")
    per=$(awk -v m="$median" -v e="$elements" 'BEGIN { print m / e }')
    echo "| \`$id\` | $(human "$median") | $(human "$low") – $(human "$high") | $elements | $(human "$per") |"
done
