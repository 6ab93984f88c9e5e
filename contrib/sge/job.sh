#!/bin/sh
# A Grid Engine job script for a checkpointable program under libcr-rs:
#   qsub -ckpt libcr -c sx -r y job.sh PROGRAM ARGS...        (checkpoint on migration)
#   qsub -ckpt libcr -c 00:30:00 -r y job.sh PROGRAM ARGS...  (also every 30 minutes)
# The first run starts PROGRAM; a run after a migration or reschedule (RESTARTED != 0) finds
# its images in $SGE_CKPT_DIR/$JOB_ID and resumes. Its output is appended to the job's -o file.
# CR_RUN (exported with qsub -v) names cr_run when it is not in the job's PATH.
# No "#$ -c" line here: an embedded -c wins over qsub's, so `qsub -c INTERVAL` would lose its
# interval (Grid Engine 8.1.9); without -c the environment's `when` applies.
#$ -S /bin/sh
#$ -ckpt libcr
#$ -r y
echo "libcr job $JOB_ID on $(hostname), RESTARTED=${RESTARTED:-0}" >&2
exec "${CR_RUN:-cr_run}" --checkpoint-dir "${SGE_CKPT_DIR:-$TMPDIR}/$JOB_ID" -- "$@"
