#!/usr/bin/env bash
# Runs the test suite once per Keras backend (KERAS_BACKEND is fixed at import,
# so each backend needs its own process), prints each backend's output and
# summary, and fails if any backend fails -- including pytest's exit code 5
# ("no tests collected").
#
# The backends run concurrently by default: much of a run is single-threaded
# (Python, graph tracing, XLA compiles, subprocess exports), so on 2 cores the
# three together take about half the time of running them one after another.
# PARALLEL=0 runs them one at a time.
set -u
cd "$(dirname "$0")/.."
PY=.venv/bin/python
backends=${BACKENDS:-"tensorflow jax torch"}
parallel=${PARALLEL:-1}
# Tests marked backend_independent (same result under every backend) run
# under one backend only: torch, the quickest of the three, when it runs.
case " $backends " in
  *" torch "*) default_once=torch ;;
  *) default_once=${backends%% *} ;;
esac
export KERAS_DMPO_BACKEND_INDEPENDENT_ON=${KERAS_DMPO_BACKEND_INDEPENDENT_ON:-$default_once}
# Lint and format first: seconds, and a failure here needs no test run.
echo "[$(date +%H:%M:%S)] ruff check + ruff format --check"
if ! .venv/bin/ruff check . || ! .venv/bin/ruff format --check .; then
  echo "ruff failed: run '.venv/bin/ruff format . && .venv/bin/ruff check --fix .' and review the diff"
  exit 1
fi
logdir=$(mktemp -d)
declare -A status elapsed

run_backend() {
  local backend=$1 start
  start=$(date +%s)
  KERAS_BACKEND=$backend $PY -m pytest -q -p no:cacheprovider "${@:2}" > "$logdir/$backend.log" 2>&1
  echo $? > "$logdir/$backend.rc"
  echo $(( $(date +%s) - start )) > "$logdir/$backend.seconds"
  echo "[$(date +%H:%M:%S)] KERAS_BACKEND=$backend finished: $(tail -n 1 "$logdir/$backend.log")"
}

for backend in $backends; do
  if [ "$parallel" = 1 ]; then
    run_backend "$backend" "$@" &
  else
    run_backend "$backend" "$@"
  fi
done
wait

failed=0
for backend in $backends; do
  echo "=================== KERAS_BACKEND=$backend ==================="
  cat "$logdir/$backend.log"
done
echo "=================== summary ==================="
for backend in $backends; do
  rc=$(cat "$logdir/$backend.rc" 2>/dev/null || echo 1)
  echo "$backend: exit $rc: $(tail -n 1 "$logdir/$backend.log") [$(cat "$logdir/$backend.seconds" 2>/dev/null)s]"
  [ "$rc" = 0 ] || failed=1
done
rm -rf "$logdir"
exit $failed
