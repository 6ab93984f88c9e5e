#!/bin/bash
# Grid Engine end to end (run by tests/cluster.rs under `make check-cluster`, as root):
# starts Debian's sge_qmaster and sge_execd on this host, installs contrib/sge's checkpoint
# environment, submits a counting job as an unprivileged user with `qsub -ckpt libcr`, migrates
# it with `qmod -sj` once it has counted a while, and checks that the job ran again
# (RESTARTED=2), resumed its count from the checkpoint instead of from zero, and ended correct;
# then submits one with `-c 00:00:05` and checks that Grid Engine itself took periodic
# checkpoints through ckpt_command.
# The daemons are stopped at the end, also on failure.
# Environment: CR_RUN_DIR (cr_run and its libraries, readable by JOB_USER), COUNTER_JOB (the
# counting program), WORK (an empty directory for this test), CONTRIB (contrib/sge), JOB_USER.
# Exit 0 passed, 77 skipped (Grid Engine not installed), anything else failed.
set -euo pipefail
: "${CR_RUN_DIR:?}" "${COUNTER_JOB:?}" "${WORK:?}" "${CONTRIB:?}" "${JOB_USER:=nobody}"
STEPS=${STEPS:-800}
STEP_MS=${STEP_MS:-50}
PERIODIC_STEPS=${PERIODIC_STEPS:-900}
log() { echo "sge.sh: $(date +%T) $*"; }
for t in sge_qmaster sge_execd qsub qconf qstat qmod; do
    if ! command -v "$t" >/dev/null && [ ! -x "/usr/sbin/$t" ]; then
        log "Grid Engine is not installed ($t missing): apt-get install gridengine-master gridengine-exec gridengine-client"
        exit 77
    fi
done
export SGE_ROOT=/var/lib/gridengine SGE_CELL=default
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
common=$SGE_ROOT/$SGE_CELL/common
host=$(cat "$common/act_qmaster")
qmaster_pid_file=/var/spool/gridengine/qmaster/qmaster.pid
# execd spools under the name the host resolves to (localhost here, whatever the aliases say).
execd_pid() { cat /var/spool/gridengine/execd/*/execd.pid 2>/dev/null | head -n 1; }
if [ -e "$qmaster_pid_file" ] && kill -0 "$(cat "$qmaster_pid_file")" 2>/dev/null; then
    log "a sge_qmaster already runs here: not touching it"
    exit 1
fi
if [ -n "$(execd_pid)" ] && kill -0 "$(execd_pid)" 2>/dev/null; then
    log "a sge_execd already runs here: not touching it"
    exit 1
fi
rm -f /var/spool/gridengine/execd/*/execd.pid
started=()
cleanup() {
    rc=$?
    set +e
    log "stopping Grid Engine"
    qdel -u '*' '*' >/dev/null 2>&1
    [ -n "$(execd_pid)" ] && qconf -ke all >/dev/null 2>&1
    qconf -km >/dev/null 2>&1
    for pid in "${started[@]}"; do
        for _ in $(seq 300); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -0 "$pid" 2>/dev/null && { log "killing $pid"; kill -KILL "$pid"; }
    done
    # Jobs' processes (shepherds, the job) left by a killed execd.
    if [ -n "${job_id:-}" ]; then
        for p in $(pgrep -u "$JOB_USER" -f "counter_job|cr_run" 2>/dev/null); do
            grep -qs "JOB_ID=$job_id" "/proc/$p/environ" && kill -KILL "$p"
        done
    fi
    if [ "$rc" != 0 ]; then
        log "FAILED ($rc); logs:"
        tail -n 30 /var/spool/gridengine/qmaster/messages 2>/dev/null
        tail -n 30 "/var/spool/gridengine/execd/$host/messages" 2>/dev/null
        for f in "$WORK"/out/*; do echo "== $f"; cat "$f"; done
    fi
    exit "$rc"
}
trap cleanup EXIT

# Host names: the host's name resolves to 127.0.0.1, which resolves back to localhost.
echo "$host localhost" > "$common/host_aliases"
mkdir -p /var/run/gridengine && chown sgeadmin:sgeadmin /var/run/gridengine
daemon_env=(env -i SGE_ROOT="$SGE_ROOT" SGE_CELL="$SGE_CELL" PATH="$PATH")
t0=$(date +%s)
"${daemon_env[@]}" /usr/sbin/sge_qmaster
for _ in $(seq 300); do [ -s "$qmaster_pid_file" ] && qconf -sh >/dev/null 2>&1 && break; sleep 0.1; done
started+=("$(cat "$qmaster_pid_file")")
log "qmaster up (pid ${started[0]})"

# The host executes and submits; the global configuration reports load every 5 s (a migrated
# job is restarted after the next report).
cat > "$WORK/exechost" <<EOT
hostname $host
load_scaling NONE
complex_values NONE
user_lists NONE
xuser_lists NONE
projects NONE
xprojects NONE
usage_scaling NONE
report_variables NONE
EOT
qconf -Ae "$WORK/exechost" >/dev/null 2>&1 || qconf -Me "$WORK/exechost" >/dev/null
qconf -as "$host" >/dev/null
qconf -sconf global | sed -e 's/^load_report_time .*/load_report_time 00:00:05/' > "$WORK/global"
qconf -Mconf "$WORK/global" >/dev/null

# The checkpoint environment of contrib/sge, with its commands where the job user reaches them.
mkdir -p "$WORK/ckpt" "$WORK/out" "$WORK/sge"
chmod 1777 "$WORK/ckpt" "$WORK/out"
chmod 755 "$WORK" "$WORK/sge"
cp "$CONTRIB"/ckpt_command "$CONTRIB"/migr_command "$CONTRIB"/clean_command \
   "$CONTRIB"/common.sh "$CONTRIB"/job.sh "$WORK/sge/"
chmod 755 "$WORK"/sge/*
sed -e "s|/usr/local/share/libcr/sge|$WORK/sge|g" -e "s|^ckpt_dir .*|ckpt_dir $WORK/ckpt|" \
    "$CONTRIB/libcr.ckpt" > "$WORK/libcr.ckpt"
# (Grid Engine keeps its configuration across runs: modify what exists, add what does not.)
if qconf -sckpt libcr >/dev/null 2>&1; then
    qconf -Mckpt "$WORK/libcr.ckpt" >/dev/null
else
    qconf -Ackpt "$WORK/libcr.ckpt" >/dev/null
fi
if qconf -sq all.q >/dev/null 2>&1; then
    qconf -sq all.q > "$WORK/all.q.template"
else
    EDITOR=cat qconf -aq all.q 2>/dev/null | grep -v '^file unchanged' > "$WORK/all.q.template" || true
fi
sed -e "s/^hostlist .*/hostlist $host/" -e 's/^slots .*/slots 2/' \
    -e 's/^load_thresholds .*/load_thresholds NONE/' -e 's/^pe_list .*/pe_list NONE/' \
    -e 's/^ckpt_list .*/ckpt_list libcr/' -e 's/^min_cpu_interval .*/min_cpu_interval 00:00:05/' \
    -e 's/^rerun .*/rerun TRUE/' "$WORK/all.q.template" > "$WORK/all.q"
if qconf -sq all.q >/dev/null 2>&1; then
    qconf -Mq "$WORK/all.q" >/dev/null
else
    qconf -Aq "$WORK/all.q" >/dev/null
fi

"${daemon_env[@]}" /usr/sbin/sge_execd
for _ in $(seq 300); do [ -n "$(execd_pid)" ] && break; sleep 0.1; done
started+=("$(execd_pid)")
for _ in $(seq 600); do
    qhost 2>/dev/null | awk '$1 != "global" && $1 != "HOSTNAME" && NF > 4 && $4 != "-" { ok = 1 } END { exit !ok }' && break
    sleep 0.1
done
log "execd up (pid ${started[1]}) after $(( $(date +%s) - t0 )) s"

# The job, as the unprivileged user.
as_user() { setpriv --reuid="$JOB_USER" --regid="$(id -g "$JOB_USER")" --clear-groups -- "$@"; }
job_out=$WORK/out/job.out
job_err=$WORK/out/job.err
cd "$WORK/out"
job_id=$(as_user env SGE_ROOT="$SGE_ROOT" SGE_CELL="$SGE_CELL" PATH="$CR_RUN_DIR:$PATH" \
    qsub -terse -cwd -ckpt libcr -c sx -r y -V -v CR_RUN="$CR_RUN_DIR/cr_run" -o "$job_out" -e "$job_err" -N counter \
    "$WORK/sge/job.sh" "$COUNTER_JOB" "$STEPS" "$STEP_MS")
log "submitted job $job_id"
# The count of a job that ran more than once: no step twice from zero (a fresh start), no gap,
# up to the last step. A resumed run may repeat the steps after its checkpoint.
check_count() { # FILE STEPS
    awk -v steps="$2" '
        /^step / { n = $2 + 0; if (n == 0) zero++
                   if (have && n > prev + 1) { print "gap " prev " -> " n; bad = 1 }
                   prev = n; have = 1 }
        END { if (bad || zero > 1 || prev != steps - 1) {
                  print "bad count: started from zero " zero " time(s), last step " prev; exit 1 }
              print "count continued across runs, last step " prev }' "$1"
}
wait_for() { # SECONDS DESCRIPTION COMMAND...
    local limit=$1 what=$2; shift 2
    for _ in $(seq $((limit * 10))); do "$@" && return 0; sleep 0.1; done
    log "timed out after $limit s waiting for $what"
    qstat -u '*' -f || true
    return 1
}
wait_for 120 "the job to count" grep -qs '^step 100$' "$job_out"
# A checkpoint on request (ckpt_command's way, the job goes on), then the migration.
wait_for 60 "a checkpoint directory" test -d "$WORK/ckpt/$job_id"
as_user "$WORK/sge/ckpt_command" "$job_id" 0 "$WORK/ckpt"
log "requested checkpoint done: $(ls "$WORK/ckpt/$job_id")"
wait_for 60 "the job to count on" grep -qs '^step 150$' "$job_out"
tm=$(date +%s)
qmod -sj "$job_id"
log "qmod -sj $job_id"
wait_for 180 "the job to run again" grep -qs 'RESTARTED=2' "$job_err"
log "restarted after $(( $(date +%s) - tm )) s"
wait_for 300 "the job to end" sh -c "! qstat -u '*' | grep -q \"^ *$job_id \""
log "job ended; output:"
cat "$job_err"
# The count: run 1 counted from 0; run 2 continued from its checkpoint, up to the end, and the
# job's end check (its state equals an uninterrupted run's) passed.
grep -q "^PASS counter_job $STEPS\$" "$job_out" || { log "no PASS line"; exit 1; }
check_count "$job_out" "$STEPS"
grep -q 'RESTARTED=0' "$job_err" && grep -q 'RESTARTED=2' "$job_err"
[ ! -e "$WORK/ckpt/$job_id" ] || ! ls "$WORK/ckpt/$job_id" | grep -q '\.ckpt$' || { log "images left after the end"; exit 1; }
log "migration passed after $(( $(date +%s) - t0 )) s"

# Periodic checkpoints by Grid Engine itself: `qsub -c INTERVAL` (at least the queue's
# min_cpu_interval, 5 s here) makes sge_execd run ckpt_command every interval; the job script
# gives cr_run no --every, so every generation in the job's directory was asked for by SGE.
# Generation 2 must appear while the job runs (two periodic checkpoints); the job then ends
# correct and its images are gone.
job_out=$WORK/out/periodic.out
job_err=$WORK/out/periodic.err
first_job=$job_id
job_id=$(as_user env SGE_ROOT="$SGE_ROOT" SGE_CELL="$SGE_CELL" PATH="$CR_RUN_DIR:$PATH" \
    qsub -terse -cwd -ckpt libcr -c 00:00:05 -r y -V -v CR_RUN="$CR_RUN_DIR/cr_run" -o "$job_out" -e "$job_err" -N periodic \
    "$WORK/sge/job.sh" "$COUNTER_JOB" "$PERIODIC_STEPS" "$STEP_MS")
log "submitted job $job_id (-c 00:00:05, after job $first_job)"
wait_for 120 "the job to count" grep -qs '^step 1$' "$job_out"
log "shepherd: $(grep -h '^ckpt_interval\|^ckpt_job\|^ckpt_interface' /var/spool/gridengine/execd/*/active_jobs/"$job_id".1/config 2>/dev/null | tr '\n' ' ')"
tp=$(date +%s)
wait_for 90 "a second periodic checkpoint" sh -c "ls '$WORK/ckpt/$job_id' 2>/dev/null | grep -q '\.00000[2-9]\.ckpt\$'"
log "generations $(ls "$WORK/ckpt/$job_id" | grep '\.ckpt$' | tr '\n' ' ')after $(( $(date +%s) - tp )) s of counting"
wait_for 300 "the job to end" sh -c "! qstat -u '*' | grep -q \"^ *$job_id \""
grep -q "^PASS counter_job $PERIODIC_STEPS\$" "$job_out" || { log "no PASS line"; exit 1; }
check_count "$job_out" "$PERIODIC_STEPS"
[ ! -e "$WORK/ckpt/$job_id" ] || ! ls "$WORK/ckpt/$job_id" | grep -q '\.ckpt$' || { log "images left after the end"; exit 1; }
log "passed in $(( $(date +%s) - t0 )) s"
