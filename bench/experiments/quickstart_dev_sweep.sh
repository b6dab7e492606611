#!/usr/bin/env bash
# Choose the quickstart schedule on the dev split (never the final one).
#
#   bash bench/experiments/quickstart_dev_sweep.sh WORK NAME [OVERRIDE ...]
#
# Runs recipes/quickstart.yaml with vars.split=dev in the run folder runs/dev/WORK, up to
# eval-after (the transfer evals and the report read other data and are not needed to choose).
# Stages whose settings did not change since the last run in WORK are skipped, so trying RL
# settings after one SFT run re-runs only rl and eval-after. Each run's RL metrics and
# evaluations are kept in runs/dev/results/NAME/, and its dev accuracies are printed. Every
# configuration tried is listed in examples/quickstart/README.md.
set -euo pipefail
cd "$(dirname "$0")/../.."
work=runs/dev/$1 name=$2
shift 2
export RMKIT_HOME=${RMKIT_HOME:-$PWD/.rmkit-cache/test-home}
.venv/bin/rmkit run recipes/quickstart.yaml --output "$work" --until eval-after vars.split=dev "$@"
keep=runs/dev/results/$name
mkdir -p "$keep"
printf '%s\n' "$@" > "$keep/overrides.txt"
cp "$work/rl/metrics.jsonl" "$keep/rl-metrics.jsonl"
cp "$work/sft/metrics.jsonl" "$keep/sft-metrics.jsonl"
for stage in eval-before eval-sft eval-after; do
    mkdir -p "$keep/$stage"
    cp "$work/$stage/config.json" "$work/$stage/metrics.json" "$work/$stage/predictions.jsonl" "$keep/$stage/"
    python3 -c "import json,sys; m=json.load(open(sys.argv[1])); print(sys.argv[2], m['overall'])" \
        "$keep/$stage/metrics.json" "$stage"
done
