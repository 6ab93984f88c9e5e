#!/bin/bash
# Slurm end to end (run by tests/cluster.rs under `make check-cluster`, as root): starts munged,
# slurmctld and slurmd on this host with a private minimal slurm.conf, submits a counting job
# as an unprivileged user with contrib/slurm/job.sbatch (`--requeue --signal=B:USR1@60`,
# cr_run --on-signal USR1,TERM, periodic checkpoints), requeues it with `scontrol requeue` once
# it has counted a while, and checks that the second run (SLURM_RESTART_COUNT=1) resumed its
# count from a checkpoint instead of from zero and ended correct; then does the same with a
# preemption (PreemptMode=REQUEUE: a job of a higher-priority partition takes the node).
# Everything started here is stopped at the end, also on failure.
# Environment: CR_RUN_DIR, COUNTER_JOB, WORK, CONTRIB (contrib/slurm), JOB_USER (as sge.sh).
# Exit 0 passed, 77 skipped (Slurm not installed), anything else failed.
set -euo pipefail
: "${CR_RUN_DIR:?}" "${COUNTER_JOB:?}" "${WORK:?}" "${CONTRIB:?}" "${JOB_USER:=nobody}"
STEPS=${STEPS:-800}
STEP_MS=${STEP_MS:-50}
log() { echo "slurm.sh: $(date +%T) $*"; }
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
for t in slurmctld slurmd sbatch scontrol squeue munged; do
    command -v "$t" >/dev/null || { log "Slurm is not installed ($t missing): apt-get install slurm-wlm munge"; exit 77; }
done
started=()
cleanup() {
    rc=$?
    set +e
    log "stopping Slurm"
    [ -n "${job_id:-}" ] && scancel "$job_id" 2>/dev/null
    for pid in "${started[@]}"; do kill -TERM "$pid" 2>/dev/null; done
    for pid in "${started[@]}"; do
        for _ in $(seq 200); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -0 "$pid" 2>/dev/null && { log "killing $pid"; kill -KILL "$pid"; }
    done
    if [ -n "${job_id:-}" ]; then
        for p in $(pgrep -u "$JOB_USER" -f "counter_job|cr_run|job.sbatch" 2>/dev/null); do
            grep -qs "SLURM_JOB_ID=$job_id" "/proc/$p/environ" && kill -KILL "$p"
        done
    fi
    rm -f /run/slurmctld.pid
    if [ "$rc" != 0 ]; then
        log "FAILED ($rc); logs:"
        tail -n 40 "$WORK/slurmctld.log" "$WORK/slurmd.log" 2>/dev/null
        for f in "$WORK"/out/*; do echo "== $f"; cat "$f"; done
    fi
    exit "$rc"
}
trap cleanup EXIT
t0=$(date +%s)
host=$(hostname)
mkdir -p "$WORK/state" "$WORK/spool" "$WORK/out" "$WORK/ckpt" "$WORK/munge"
chmod 755 "$WORK"
chmod 1777 "$WORK/out" "$WORK/ckpt"

# munge: ours unless one already runs (then it is used and left alone).
if [ -S /run/munge/munge.socket.2 ] && munge -n >/dev/null 2>&1; then
    log "using the running munged"
else
    [ -s /etc/munge/munge.key ] || mungekey --create 2>/dev/null || create-munge-key
    mkdir -p /run/munge /var/log/munge /var/lib/munge
    chown munge:munge /run/munge /var/log/munge /var/lib/munge
    chmod 755 /run/munge
    setpriv --reuid=munge --regid=munge --clear-groups -- munged --force
    for _ in $(seq 100); do [ -s /run/munge/munged.pid ] && munge -n >/dev/null 2>&1 && break; sleep 0.1; done
    started+=("$(cat /run/munge/munged.pid)")
    log "munged up"
fi

read -r cpus mem < <(slurmd -C | awk '/^NodeName/ { for (i = 1; i <= NF; i++) { split($i, kv, "="); v[kv[1]] = kv[2] } print v["CPUs"], int(v["RealMemory"] / 2) }')
export SLURM_CONF=$WORK/slurm.conf
cat > "$SLURM_CONF" <<EOT
ClusterName=libcr
SlurmctldHost=$host
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=cred_expire=5
StateSaveLocation=$WORK/state
SlurmdSpoolDir=$WORK/spool
SlurmctldPidFile=$WORK/slurmctld.pid
SlurmdPidFile=$WORK/slurmd.pid
SlurmctldLogFile=$WORK/slurmctld.log
SlurmdLogFile=$WORK/slurmd.log
SlurmctldPort=${SLURMCTLD_PORT:-16817}
SlurmdPort=${SLURMD_PORT:-16818}
ProctrackType=proctrack/pgid
TaskPlugin=task/none
MpiDefault=none
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2,bf_interval=2
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
JobRequeue=1
KillWait=10
PreemptType=preempt/partition_prio
PreemptMode=REQUEUE
NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=batch Nodes=$host Default=YES MaxTime=INFINITE State=UP PriorityTier=1
PartitionName=high Nodes=$host MaxTime=INFINITE State=UP PriorityTier=10
EOT
slurmctld -f "$SLURM_CONF"
for _ in $(seq 100); do [ -s "$WORK/slurmctld.pid" ] && break; sleep 0.1; done
started+=("$(cat "$WORK/slurmctld.pid")")
slurmd -f "$SLURM_CONF"
for _ in $(seq 100); do [ -s "$WORK/slurmd.pid" ] && break; sleep 0.1; done
started+=("$(cat "$WORK/slurmd.pid")")
for _ in $(seq 300); do sinfo -h -o %t 2>/dev/null | grep -qx idle && break; sleep 0.1; done
log "slurmctld and slurmd up after $(( $(date +%s) - t0 )) s: $(sinfo -h -o '%P %t')"

as_user() { setpriv --reuid="$JOB_USER" --regid="$(id -g "$JOB_USER")" --clear-groups -- "$@"; }
cp "$CONTRIB/job.sbatch" "$WORK/job.sbatch"
chmod 755 "$WORK/job.sbatch"
job_out=$WORK/out/job.out
cd "$WORK/out"
job_id=$(as_user env SLURM_CONF="$SLURM_CONF" PATH="$CR_RUN_DIR:$PATH" HOME="$WORK/out" \
    LIBCR_CKPT_ROOT="$WORK/ckpt" LIBCR_EVERY=2s \
    sbatch --parsable --export=ALL -o "$job_out" -e "$job_out" -J counter \
    "$WORK/job.sbatch" "$COUNTER_JOB" "$STEPS" "$STEP_MS")
log "submitted job $job_id"
wait_for() { # SECONDS DESCRIPTION COMMAND...
    local limit=$1 what=$2; shift 2
    for _ in $(seq $((limit * 10))); do "$@" && return 0; sleep 0.1; done
    log "timed out after $limit s waiting for $what"
    squeue -a || true
    return 1
}
# The count: no second start from zero, no gap, up to the last step (see sge.sh).
check_count() { # FILE STEPS
    awk -v steps="$2" '
        /^step / { n = $2 + 0; if (n == 0) zero++
                   if (have && n > prev + 1) { print "gap " prev " -> " n; bad = 1 }
                   prev = n; have = 1 }
        END { if (bad || zero > 1 || prev != steps - 1) {
                  print "bad count: started from zero " zero " time(s), last step " prev; exit 1 }
              print "count continued across runs, last step " prev }' "$1"
}
wait_for 120 "the job to count" grep -qs '^step 150$' "$job_out"
wait_for 60 "a periodic checkpoint" sh -c "ls '$WORK/ckpt/$job_id' | grep -q 'ckpt\$'"
tr=$(date +%s)
scontrol requeue "$job_id"
log "scontrol requeue $job_id"
wait_for 180 "the job to run again" grep -qs 'SLURM_RESTART_COUNT=1' "$job_out"
log "running again after $(( $(date +%s) - tr )) s"
wait_for 300 "the job to end" sh -c "scontrol show job $job_id | grep -q 'JobState=COMPLETED'"
log "job ended; its output:"
grep -v '^step ' "$job_out"
grep -q "^PASS counter_job $STEPS\$" "$job_out" || { log "no PASS line"; exit 1; }
check_count "$job_out" "$STEPS"
grep -q 'SLURM_RESTART_COUNT=0' "$job_out"
log "requeue passed after $(( $(date +%s) - t0 )) s"

# Preemption: a job of the higher-priority partition needs the whole node; the counting job is
# requeued (PreemptMode=REQUEUE), runs again after it and resumes.
job_out=$WORK/out/low.out
first_job=$job_id
job_id=$(as_user env SLURM_CONF="$SLURM_CONF" PATH="$CR_RUN_DIR:$PATH" HOME="$WORK/out" \
    LIBCR_CKPT_ROOT="$WORK/ckpt" LIBCR_EVERY=2s \
    sbatch --parsable --export=ALL --exclusive -o "$job_out" -e "$job_out" -J low \
    "$WORK/job.sbatch" "$COUNTER_JOB" "$STEPS" "$STEP_MS")
log "submitted job $job_id (partition batch, after job $first_job)"
wait_for 120 "the job to count" grep -qs '^step 150$' "$job_out"
wait_for 60 "a periodic checkpoint" sh -c "ls '$WORK/ckpt/$job_id' | grep -q 'ckpt\$'"
high=$(as_user env SLURM_CONF="$SLURM_CONF" sbatch --parsable --exclusive -p high \
    -o "$WORK/out/high.out" -J high --wrap "sleep 3")
tp=$(date +%s)
log "submitted job $high (partition high)"
wait_for 180 "the preempted job to run again" grep -qs 'SLURM_RESTART_COUNT=1' "$job_out"
log "running again after $(( $(date +%s) - tp )) s"
wait_for 300 "the job to end" sh -c "scontrol show job $job_id | grep -q 'JobState=COMPLETED'"
grep -v '^step ' "$job_out"
grep -q "^PASS counter_job $STEPS\$" "$job_out" || { log "no PASS line"; exit 1; }
check_count "$job_out" "$STEPS"
scontrol show job "$high" | grep -q 'JobState=COMPLETED' || { log "the high job did not complete"; exit 1; }
log "passed in $(( $(date +%s) - t0 )) s"
