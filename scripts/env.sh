#!/usr/bin/env bash
# Create (if missing) and update the project's virtual environment, then register its Jupyter kernel.
# Idempotent: re-installs only when pyproject.toml changed since the last successful install.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PY=${PYTHON:-python3}
KERNEL=nki-moe

if [ ! -x "$VENV/bin/python" ]; then
    echo "[env] creating virtual environment $VENV with $($PY --version)"
    "$PY" -m venv "$VENV"
fi
stamp="$VENV/.nki-moe-installed"
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    echo "[env] installing pinned dependencies (pyproject.toml) into $VENV"
    "$VENV/bin/python" -m pip install --quiet --upgrade pip
    "$VENV/bin/python" -m pip install --quiet -e ".[dev]"
    echo "$want" > "$stamp"
fi
# The kernelspec lives inside the venv (--sys-prefix) with an absolute interpreter path, so papermill
# runs notebooks on this environment whether or not it is activated.
if [ ! -f "$VENV/share/jupyter/kernels/$KERNEL/kernel.json" ]; then
    "$VENV/bin/python" -m ipykernel install --sys-prefix --name "$KERNEL" \
        --display-name "Python (nki-moe)" >/dev/null
    echo "[env] registered Jupyter kernel '$KERNEL'"
fi
