#!/bin/sh
# A Grid Engine job script for a checkpointable program under libcr-rs:
#   qsub -ckpt libcr -c sx -r y job.sh PROGRAM ARGS...
# The first run starts PROGRAM; a run after a migration or reschedule (RESTARTED != 0) finds
# its images in $SGE_CKPT_DIR/$JOB_ID and resumes. Its output is appended to the job's -o file.
# CR_RUN (exported with qsub -v) names cr_run when it is not in the job's PATH.
#$ -S /bin/sh
#$ -ckpt libcr
#$ -c sx
#$ -r y
echo "libcr job $JOB_ID on $(hostname), RESTARTED=${RESTARTED:-0}" >&2
exec "${CR_RUN:-cr_run}" --checkpoint-dir "${SGE_CKPT_DIR:-$TMPDIR}/$JOB_ID" -- "$@"
