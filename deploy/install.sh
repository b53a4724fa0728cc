#!/usr/bin/env bash
# nisbflow's install steps, shared by `make` (CI, laptops: `make install`) and deploy/Dockerfile (the image), so CI
# exercises exactly what the image runs.
#
#   VENV=.venv              virtual environment to create or reuse
#   PYTHON=python3          interpreter that creates it
#   TORCH_SPEC=torch==2.13.0
#   TORCH_INDEX_URL=        e.g. https://download.pytorch.org/whl/cu128 for CUDA wheels in the image; empty: pip's
#                           default index (a local CPU build on our CI machines)
#   EXTRAS=dev              project extras: dev (tests), gpu (cupy, dask-cuda), notebook (JupyterLab), slurm,
#                           skeleton (kimimaro)
#   DEPS_ONLY=              set: install torch and the dependencies pyproject.toml lists, not the project
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
EXTRAS=${EXTRAS:-dev}

test -x "$VENV/bin/python" || "$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet --upgrade pip
# torch first, pinned: a bare `torch` requirement would pull several GB of CUDA wheels where they are not wanted
"$VENV/bin/python" -m pip install --quiet ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"} "$TORCH_SPEC"
if [ -n "${DEPS_ONLY:-}" ]; then
    # only what pyproject.toml lists (with the extras), not the project: the image installs these in a layer of
    # their own, before the source is copied, so a code change does not reinstall torch and the rest
    "$VENV/bin/python" - "$EXTRAS" > "$VENV/requirements-deps.txt" <<'PY'
import sys, tomllib
project = tomllib.load(open("pyproject.toml", "rb"))["project"]
extras = [e for e in sys.argv[1].split(",") if e]
print("\n".join(project["dependencies"] + [r for e in extras for r in project["optional-dependencies"][e]]))
PY
    "$VENV/bin/python" -m pip install --quiet -r "$VENV/requirements-deps.txt"
    exit 0
fi
"$VENV/bin/python" -m pip install --quiet -e ".[$EXTRAS]"
"$VENV/bin/nisbflow" --help > /dev/null   # the console script imports and runs
