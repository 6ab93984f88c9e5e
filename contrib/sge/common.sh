# Shared by the libcr checkpoint environment's commands (sourced).
# Arguments: JOB_ID JOB_PID CKPT_DIR (from $job_id $job_pid $ckpt_dir in libcr.ckpt).
job_id=$1
ckpt_dir=$3
dir=$ckpt_dir/$job_id
say() { echo "libcr ${0##*/} (job $job_id): $*" >&2; }
# The supervising cr_run of the job (it writes its pid into its checkpoint directory).
supervisor() {
    [ -r "$dir/cr_run.pid" ] || return 1
    pid=$(cat "$dir/cr_run.pid") || return 1
    kill -0 "$pid" 2>/dev/null || return 1
    echo "$pid"
}
# The number of generations (image files) in the job's directory.
generations() { ls "$dir" 2>/dev/null | grep -c '\.ckpt$'; }
