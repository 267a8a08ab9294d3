#!/usr/bin/env bash
# Run a command and run it again whenever it exits (a second later), until this script is told to stop (TERM or
# INT): then the command gets SIGTERM and is waited for. `make run` keeps its outbox worker alive this way; in
# production, systemd's Restart=always does the same (deploy/fremforge-worker.service).
set -u
child=""
stop() {
  if [ -n "$child" ]; then kill -TERM "$child" 2>/dev/null; wait "$child" 2>/dev/null; fi
  exit 0
}
trap stop TERM INT
while :; do
  "$@" &
  child=$!
  wait "$child"
  status=$?
  child=""
  sleep 1 &  # told to stop meanwhile (make run's Ctrl-C reaches the command first), nothing more is said
  wait $!
  echo "keep-running: $1 exited with status $status; starting it again" >&2
done
