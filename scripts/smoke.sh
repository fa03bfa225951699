#!/usr/bin/env bash
# The smoke run (configs/smoke.yaml): the whole chain, the rl stage and a round on six tasks, in a copy of
# the workflow (default .smoke/) whose rules, scripts and code are this checkout's own (linked),
# so the demo's data/ is left alone. Extra arguments go to snakemake (a target, -n, --forceall).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
dir="${SMOKE_DIR:-$root/.smoke}"
snakemake="${SNAKEMAKE:-$root/.venv/bin/snakemake}"

mkdir -p "$dir/data"
for name in Snakefile rules profiles envs report src configs config.yaml; do
    ln -sfn "$root/$name" "$dir/$name"
done
ln -sfn "$root/data/site" "$dir/data/site"
mkdir -p "$dir/curation/edits"  # the copy's own hand verdicts: none
touch "$dir/curation/reject.txt" "$dir/curation/keep.txt"
cd "$dir"
exec "$snakemake" all rl rounds --cores "${CORES:-2}" "$@" --configfile configs/smoke.yaml
