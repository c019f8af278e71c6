#!/usr/bin/env bash
# What `pip install langprune` gives: build the wheel, install it alone into a fresh virtualenv (torch from the
# same local CPU build, the tested pins), then run `langprune --version` and one tiny prune from that install.
# Needs the development .venv (scripts/setup.sh) only to build the wheel and the tiny checkpoint.
set -euo pipefail
cd "$(dirname "$0")/.."
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
PIP="--disable-pip-version-check -q"
.venv/bin/python -m pip wheel $PIP --no-deps --no-build-isolation -w "$work/dist" .
python3 -m venv "$work/venv"
"$work/venv/bin/pip" install $PIP "torch==2.13.0"
"$work/venv/bin/pip" install $PIP "$work"/dist/langprune-*.whl -c scripts/constraints.txt
"$work/venv/bin/langprune" --version
# A tiny random Llama checkpoint with a word-level tokenizer (the tests' own fixture), pruned by the installed CLI.
.venv/bin/python -c "import sys; from pathlib import Path; sys.path.insert(0, 'tests')
from conftest import save_checkpoint, tiny_model
save_checkpoint(tiny_model('llama'), Path(sys.argv[1]))" "$work/tiny"
(cd "$work" && venv/bin/langprune prune --model tiny --method wanda --sparsity 0.5 \
    --calib file:tiny/calib.txt --nsamples 2 --seqlen 16 --out run)
test -f "$work/run/report.json" && test -f "$work/run/README.md" && test -f "$work/run/recipe.yaml"
echo "wheel check: installed $(ls "$work"/dist) into a fresh virtualenv and pruned with it"
