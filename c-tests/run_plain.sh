#!/bin/sh
# run_plain.sh - run one test program WITHOUT checkpointing, following the
# READY / GO / PASS protocol (sanity check of the test program itself).
#
# usage: ./run_plain.sh [-d SECONDS] [-w WRAPPER] -- PROGRAM [ARGS...]
#   -d  seconds to let the program work after READY before creating GO (default 1)
#   -w  wrapper command put in front of the program (e.g. cr_run)
# exit status: the program's exit status (137 if killed after delay+60 s).
delay=1
wrapper=
while [ $# -gt 0 ]; do
    case "$1" in
    -d) delay=$2; shift 2 ;;
    -w) wrapper=$2; shift 2 ;;
    --) shift; break ;;
    *) break ;;
    esac
done
tmp=$(mktemp -d)
export CR_TEST_GO="$tmp/go" CR_TEST_DIR="$tmp/dir"
mkdir -p "$CR_TEST_DIR"
mkfifo "$tmp/out"
timeout -s KILL $((${delay%.*} + 60)) $wrapper "$@" >"$tmp/out" &
pid=$!
ready=0
while IFS= read -r line; do
    echo "[out] $line"
    if [ "$line" = READY ] && [ $ready = 0 ]; then
        ready=1
        (sleep "$delay"; [ -d "$tmp" ] && touch "$CR_TEST_GO") &
    fi
done <"$tmp/out" &
reader=$!
wait $pid
rc=$?
wait $reader
rm -rf "$tmp"
echo "[exit] $rc"
exit $rc
