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
# tests/test_report.py renders build/report.html in a real headless browser: Debian's `chromium`.
if ! command -v chromium >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "[env] installing Debian's chromium (the headless browser of tests/test_report.py)"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null
    else
        echo "[env] chromium is missing and tests/test_report.py needs it; install it with:" \
            "sudo apt-get install -y chromium" >&2
    fi
fi
