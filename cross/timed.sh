#!/bin/sh
# cross/timed.sh PHASE COMMAND...: runs COMMAND and prints "[time] PHASE: N s" to stderr,
# whatever its exit status (which it returns). The Makefile's phases use it; .ci/run collects
# the lines from each step's log. Plain sh: the clean rooms run it before anything is installed.
phase="$1"
shift
begun=$(date +%s)
status=0
"$@" || status=$?
printf '[time] %s: %d s\n' "$phase" "$(( $(date +%s) - begun ))" >&2
exit "$status"
