#!/usr/bin/env bash
# The GPU check (scripts/gpu_check.py) with a hard stop at 8 minutes; the JSON is rewritten after every step,
# so a stopped run keeps what it finished. Run from anywhere:
#
#   scripts/gpu_check.sh [OUT.json] [more gpu_check.py options]   # default OUT: gpu_check.json
#   scripts/gpu_check.sh --fetch-wheels                          # where pip reaches PyPI: fill .whl/
#
# A machine without internet whose Python lacks the CLI's parser (jsonargparse and the two packages its
# signatures need) gets them from .whl/ (ignored by git): fetch them once where pip works, carry the
# folder along, and this script installs them into /tmp/gpu_check_site before the run.
set -u
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
wheels=(jsonargparse==4.53.0 docstring_parser==0.18.0 typeshed_client==2.15.0)
if [ "${1:-}" = "--fetch-wheels" ]; then
  mkdir -p .whl
  grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo /.whl/ >> .git/info/exclude
  exec "$python" -m pip download --no-deps --only-binary=:all: -d .whl "${wheels[@]}"
fi
if ! "$python" -c "import jsonargparse, docstring_parser, typeshed_client" 2>/dev/null && ls .whl/*.whl >/dev/null 2>&1; then
  "$python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/gpu_check_site .whl/*.whl \
    && export PYTHONPATH=/tmp/gpu_check_site${PYTHONPATH:+:$PYTHONPATH}
fi
out=${1:-gpu_check.json}
shift || true
PYTHONUNBUFFERED=1 exec timeout -k 15 480 "$python" scripts/gpu_check.py --json "$out" "$@"
