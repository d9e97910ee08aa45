#!/usr/bin/env bash
# One command per job on a fresh machine; each sets itself up first (a virtualenv in .venv with
# the pinned PyTorch build and everything in pyproject.toml, installed once and re-installed
# only when pyproject.toml changes).
#
#   ./run.sh demo    synthetic demo videos -> every stage of the pipeline (demo_out/)
#   ./run.sh test    the test suite
#   ./run.sh ARGS    run_pipeline.py ARGS inside the environment (e.g. ./run.sh --videos DIR)
set -euo pipefail
cd "$(dirname "$0")"

PYTHON="${PYTHON:-python3}"
VENV="${VENV:-.venv}"
EXTRAS="dev,scale"

setup() {
    if [ ! -x "$VENV/bin/python" ]; then
        "$PYTHON" -m venv "$VENV"
    fi
    local stamp="$VENV/.installed-$(sha1sum pyproject.toml | cut -c1-12)-$EXTRAS"
    if [ ! -f "$stamp" ]; then
        "$VENV/bin/python" -m pip install --quiet --upgrade pip
        "$VENV/bin/python" -m pip install --quiet -e ".[$EXTRAS]"
        rm -f "$VENV"/.installed-*
        touch "$stamp"
    fi
}

setup
case "${1:-}" in
    demo)
        shift
        exec "$VENV/bin/python" run_pipeline.py demo "$@"
        ;;
    test)
        shift
        set +e
        "$VENV/bin/python" -m pytest -q "$@"
        rc=$?
        set -e
        # pytest exits 5 when it collected no test: that is a failure of the suite, say so.
        [ "$rc" -eq 5 ] && echo "no tests were collected" >&2 && exit 1
        exit "$rc"
        ;;
    *)
        exec "$VENV/bin/python" run_pipeline.py "$@"
        ;;
esac
