#!/bin/bash
# tree_loop.sh - BLCR's classic use: a shell script that runs external
# commands in a loop, checkpointed as a tree (bash and whatever child it has
# at that moment: a command substitution subshell, seq, cksum, sleep).
#
# Run: CR_TEST_GO=/path/to/go CR_TEST_DIR=/tmp/x cr_run /bin/bash tree_loop.sh
#
# Iteration i appends the line "i N CRC LEN" to $CR_TEST_DIR/loop.out, where
# N = i % 50 + 1 and "CRC LEN" is the output of `seq 1 N | cksum`, then runs
# `sleep 0.05`; until the GO file exists, then 3 more iterations.  After that
# every line is checked: well formed, the counters 0..i-1 in order (none
# lost, none repeated), and the checksum recomputed.  `PASS tree_loop`.
set -u
NAME=tree_loop

fail() {
    echo "FAIL $NAME: $*"
    echo "FAIL $NAME: $*" >&2
    exit 1
}

[ -n "${CR_TEST_GO:-}" ] && [ -d "${CR_TEST_DIR:-}" ] || fail "CR_TEST_GO / CR_TEST_DIR not set"
out=$CR_TEST_DIR/loop.out
: >"$out" || fail "cannot create $out"

iteration() {
    local n=$(($1 % 50 + 1)) sum
    sum=$(seq 1 "$n" | cksum) || fail "seq | cksum failed in iteration $1"
    echo "$1 $n $sum" >>"$out" || fail "append to $out"
    sleep 0.05 || fail "sleep failed in iteration $1"
}

i=0
echo READY
while [ ! -e "$CR_TEST_GO" ]; do
    iteration "$i"
    i=$((i + 1))
done
for _ in 1 2 3; do
    iteration "$i"
    i=$((i + 1))
done

# Verify.
declare -A crc
want=0
while IFS= read -r line; do
    [[ $line =~ ^([0-9]+)\ ([0-9]+)\ ([0-9]+)\ ([0-9]+)$ ]] || fail "malformed line $want: '$line'"
    k=${BASH_REMATCH[1]} n=${BASH_REMATCH[2]} sum="${BASH_REMATCH[3]} ${BASH_REMATCH[4]}"
    [ "$k" -eq "$want" ] || fail "line $want has counter $k (lost or repeated iterations)"
    [ "$n" -eq $((k % 50 + 1)) ] || fail "line $want: N is $n"
    [ -n "${crc[$n]:-}" ] || crc[$n]=$(seq 1 "$n" | cksum)
    [ "$sum" = "${crc[$n]}" ] || fail "line $want: checksum '$sum', expected '${crc[$n]}'"
    want=$((want + 1))
done <"$out"
[ "$want" -eq "$i" ] || fail "$want lines in $out, but $i iterations"
[ "$i" -gt 3 ] || fail "only $i iterations"
echo "PASS $NAME"
