#!/bin/bash
# tree_pipeline.sh - `producer | filter | consumer` with data in flight in
# both pipes, checkpointed as a tree (bash, two bash subshells, awk, and a
# `sleep` now and then).
#
# Run: CR_TEST_GO=/path/to/go CR_TEST_DIR=/tmp/x cr_run /bin/bash tree_pipeline.sh
#
# producer: a bash loop printing 0, 1, 2, ... one line each (blocks when the
#           pipe is full);
# filter:   awk '{ print $1 * 2; fflush() }';
# consumer: a bash loop reading line by line, checking each line is exactly
#           2*k for k = 0, 1, 2, ... (no gap, no duplicate, nothing torn);
#           prints READY after the first 100 lines, runs `sleep 0.01` every
#           200 lines (so the pipes stay full), and after the GO file exists
#           reads 2000 more lines, writes "LINES LAST" to
#           $CR_TEST_DIR/pipeline.result and exits 0 (the producer and awk
#           then die of SIGPIPE).
# The main script checks the consumer's status and the result file and
# prints `PASS tree_pipeline`.
set -u
NAME=tree_pipeline
AFTER=2000

fail() {
    echo "FAIL $NAME: $*"
    echo "FAIL $NAME: $*" >&2
    exit 1
}

[ -n "${CR_TEST_GO:-}" ] && [ -d "${CR_TEST_DIR:-}" ] || fail "CR_TEST_GO / CR_TEST_DIR not set"
result=$CR_TEST_DIR/pipeline.result
rm -f "$result"

producer() {
    local i=0
    while echo "$i"; do
        i=$((i + 1))
    done
}

consumer() {
    local k=0 line after=-1
    while IFS= read -r line; do
        [ "$line" = $((2 * k)) ] || fail "line $k is '$line', expected $((2 * k))"
        k=$((k + 1))
        [ "$k" -eq 100 ] && echo READY
        if [ "$after" -lt 0 ]; then
            [ -e "$CR_TEST_GO" ] && after=0
        else
            after=$((after + 1))
            [ "$after" -ge "$AFTER" ] && break
        fi
        [ $((k % 200)) -eq 0 ] && sleep 0.01
    done
    [ "$after" -ge "$AFTER" ] || fail "input ended after $k lines"
    echo "$k $line" >"$result"
}

producer | awk '{ print $1 * 2; fflush() }' | consumer
status=("${PIPESTATUS[@]}")
[ "${status[2]}" -eq 0 ] || fail "consumer exited with ${status[2]}"
read -r lines last <"$result" || fail "no result file"
[ "$lines" -gt "$AFTER" ] && [ "$last" -eq $((2 * (lines - 1))) ] || fail "result '$lines $last'"
echo "PASS $NAME"
