#!/bin/bash
# Score a large BIDS cohort with `anomaly score` as a SLURM job array.
#
# Each array task scores every N-th patient (`--shard I/N`, I = 0..N-1, 0-based), so the
# N tasks together score each subject exactly once. All tasks write into the same
# output folder: subject folders never collide, dataset_description.json and
# index.html are replaced atomically, and every task rebuilds index.html from all the
# subjects present, so the index is complete once the last task has finished.
#
# Submit from the folder where the logs should go:
#     mkdir -p logs && sbatch examples/slurm_score_array.sh
# Change the number of shards with --array (keep it 0-based), e.g.
#     sbatch --array=0-49%10 examples/slurm_score_array.sh   # 50 shards, 10 at a time
#
# The normative model must exist first (see examples/slurm_fit_normative.sh); to chain:
#     fit=$(sbatch --parsable examples/slurm_fit_normative.sh)
#     sbatch --dependency=afterok:$fit examples/slurm_score_array.sh
#
#SBATCH --job-name=anomaly-score
#SBATCH --array=0-9                 # 10 shards: task ids 0..9 (must start at 0)
#SBATCH --cpus-per-task=2           # 1 core computes, 1 reads/writes in the background
#SBATCH --mem=8G                    # ~2 GB per task at 2 mm; more for 1 mm grids
#SBATCH --time=01:00:00             # ~1 s per subject with figures: plenty for ~300 subjects per task
#SBATCH --output=logs/%x-%A_%a.out  # one log per task (%A job id, %a task id)
# #SBATCH --partition=cpu           # EDIT: your CPU partition, if the cluster needs one
# #SBATCH --account=my_project      # EDIT: your account, if the cluster needs one

set -euo pipefail

# ----------------------------------------------------------------- EDIT: environment
# Load what your cluster needs and activate the environment where anomaly is installed.
# module load python/3.11           # EDIT (site-specific)
# source /path/to/venv/bin/activate # EDIT: your virtual environment (or conda activate ...)

# ----------------------------------------------------------------- EDIT: paths
# (Environment variables of the same names override them, e.g. for a local test run.)
BIDS_DIR=${BIDS_DIR:-/path/to/bids_dataset}                    # EDIT: patients (group=patient)
MODEL_DIR=${MODEL_DIR:-/path/to/models/ae-2mm}                 # EDIT: from `anomaly fit-normative`
OUT_DIR=${OUT_DIR:-/path/to/bids_dataset/derivatives/anomaly}  # EDIT: shared by all tasks
EXTRA_ARGS=()                                  # e.g. (--atlas neuromorphometrics aal) or (--no-figures)

# ----------------------------------------------------------------- shard of this task
if [ -z "${SLURM_ARRAY_TASK_ID:-}" ]; then
    echo "not a SLURM array task: submit with sbatch (or set SLURM_ARRAY_TASK_ID/COUNT to test)" >&2
    exit 2
fi
if [ "${SLURM_ARRAY_TASK_MIN:-0}" != "0" ]; then
    echo "--array must start at 0 (got min ${SLURM_ARRAY_TASK_MIN}); --shard I/N is 0-based" >&2
    exit 2
fi
# Number of shards: the array size (0..max, so max+1 also works on old SLURM versions).
N_SHARDS=${SLURM_ARRAY_TASK_COUNT:-$(( SLURM_ARRAY_TASK_MAX + 1 ))}

# Keep numpy/torch on the cores SLURM gave us (the prefetch and writer threads share them).
export OMP_NUM_THREADS=${SLURM_CPUS_PER_TASK:-1}
export MKL_NUM_THREADS=$OMP_NUM_THREADS
export MPLBACKEND=Agg

echo "$(date) task ${SLURM_ARRAY_TASK_ID}/${N_SHARDS} on $(hostname)"
# Exit status 2 means some subjects had invalid inputs: their one-line errors are in the
# log, the other subjects were scored. Rerunning a task rescores its subjects.
anomaly score "$BIDS_DIR" --model "$MODEL_DIR" --out "$OUT_DIR" \
    --shard "${SLURM_ARRAY_TASK_ID}/${N_SHARDS}" --device cpu --quiet "${EXTRA_ARGS[@]}"
echo "$(date) done"
