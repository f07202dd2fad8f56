#!/usr/bin/env bash
# Runs the test suite once per Keras backend (KERAS_BACKEND is fixed at import,
# so each backend needs its own process), prints each summary and fails if any
# backend fails -- including pytest's exit code 5 ("no tests collected").
set -u
cd "$(dirname "$0")/.."
PY=.venv/bin/python
backends=${BACKENDS:-"tensorflow jax torch"}
declare -A status summary
for backend in $backends; do
  echo "=================== KERAS_BACKEND=$backend ==================="
  log=$(mktemp)
  start=$(date +%s)
  KERAS_BACKEND=$backend $PY -m pytest -q -p no:cacheprovider "$@" 2>&1 | tee "$log"
  status[$backend]=${PIPESTATUS[0]}
  summary[$backend]="$(tail -n 1 "$log") [$(( $(date +%s) - start ))s]"
  rm -f "$log"
done
echo "=================== summary ==================="
failed=0
for backend in $backends; do
  echo "$backend: exit ${status[$backend]}: ${summary[$backend]}"
  [ "${status[$backend]}" = 0 ] || failed=1
done
exit $failed
