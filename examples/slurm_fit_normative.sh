#!/bin/bash
# Train the normative autoencoder (`anomaly fit-normative --method ae`) on one GPU node
# with torchrun (one process per GPU, DistributedDataParallel), requeued automatically
# when the time limit comes.
#
# Five minutes before the limit SLURM sends SIGUSR1 to this script (--signal below);
# the script passes SIGTERM to torchrun, whose workers finish the current batch, write
# MODEL_DIR/checkpoint.pt and exit; the job is then requeued, and the next run starts
# again with --resume, which continues from that checkpoint (the same batches as an
# uninterrupted run). When training ends, the model is written to MODEL_DIR and the
# checkpoint removed. --resume without a checkpoint simply starts from scratch, so the
# same command serves the first and every later run.
#
# Submit:  mkdir -p logs && sbatch examples/slurm_fit_normative.sh
#
#SBATCH --job-name=anomaly-fit
#SBATCH --nodes=1
#SBATCH --gres=gpu:4                # EDIT: GPUs per node (the number of torchrun processes follows)
#SBATCH --cpus-per-task=16          # data loading: ~4 cores per GPU
#SBATCH --mem=64G
#SBATCH --time=04:00:00             # any limit: the job checkpoints and requeues itself
#SBATCH --requeue                   # allow `scontrol requeue`
#SBATCH --open-mode=append          # requeued runs append to the same log
#SBATCH --signal=B:USR1@300         # SIGUSR1 to this batch script 300 s before the limit
#SBATCH --output=logs/%x-%j.out
# #SBATCH --partition=gpu           # EDIT: your GPU partition
# #SBATCH --account=my_project      # EDIT: your account, if the cluster needs one

set -uo pipefail

# ----------------------------------------------------------------- EDIT: environment
# module load python/3.11 cuda/12.1   # EDIT (site-specific)
# source /path/to/venv/bin/activate   # EDIT: environment with anomaly and CUDA torch

# ----------------------------------------------------------------- EDIT: paths and settings
# (Environment variables of the same names override them, e.g. for a local test run.)
BIDS_DIR=${BIDS_DIR:-/path/to/healthy_controls_bids}  # EDIT: participants.tsv with group=control rows
MODEL_DIR=${MODEL_DIR:-/path/to/models/ae-2mm}        # EDIT: model folder (also holds the checkpoint)
DEVICE=${DEVICE:-cuda}
# EDIT as needed (read `anomaly fit-normative --help`):
read -r -a FIT_ARGS <<< "${FIT_ARGS:---method ae --resolution 2 --epochs 100 --batch-size 2 --workers 4}"

# One process per GPU given by SLURM.
NPROC=${SLURM_GPUS_ON_NODE:-$(nvidia-smi --list-gpus 2>/dev/null | wc -l)}
[ "${NPROC:-0}" -ge 1 ] || NPROC=1
export OMP_NUM_THREADS=$(( ${SLURM_CPUS_PER_TASK:-4} / NPROC ))
[ "$OMP_NUM_THREADS" -ge 1 ] || export OMP_NUM_THREADS=1

if [ -f "$MODEL_DIR/metadata.json" ] && [ ! -f "$MODEL_DIR/checkpoint.pt" ]; then
    echo "$(date) $MODEL_DIR already holds a trained model; nothing to do"
    exit 0
fi

echo "$(date) job ${SLURM_JOB_ID:-?} (restart ${SLURM_RESTART_COUNT:-0}) on $(hostname) with $NPROC GPU(s)"
torchrun --standalone --nproc_per_node="$NPROC" -m anomaly fit-normative "$BIDS_DIR" \
    --out "$MODEL_DIR" --device "$DEVICE" --resume --quiet "${FIT_ARGS[@]}" &
pid=$!

requeue() {
    echo "$(date) time limit near: asking training to checkpoint"
    kill -TERM "$pid" 2>/dev/null
    wait "$pid"  # exit status 130: interrupted after writing the checkpoint
    echo "$(date) requeueing job ${SLURM_JOB_ID}"
    scontrol requeue "$SLURM_JOB_ID"
    exit 0
}
trap requeue USR1

wait "$pid"
status=$?
# A trapped signal makes `wait` return early; the trap then ends the script itself.
echo "$(date) torchrun exited with status $status"
exit "$status"
