#!/bin/bash
# One array task per GPU, all on one study: a SLURM job array of hpo-infer workers.
#
#   export HPO_INFER_STORAGE='postgresql://USER:PASSWORD@HOST:5432/DB'   # or source a 0600 file
#   STUDY_SPEC=studies/vllm-h100-llama8b.yaml sbatch --export=ALL docker/slurm-array.sh
#
# Each task runs `hpo-infer db upgrade` (safe from every task at once: a database lock), then one
# agent on the GPU SLURM gave it (CUDA_VISIBLE_DEVICES). Two minutes before the time limit SLURM
# sends SIGTERM: the agent ends its running trial, which is queued again, and exits 0.
#SBATCH --job-name=hpo-infer
#SBATCH --array=0-7
#SBATCH --gres=gpu:1
#SBATCH --cpus-per-task=8
#SBATCH --mem=64G
#SBATCH --time=08:00:00
#SBATCH --signal=B:TERM@120
#SBATCH --output=hpo-infer-%A_%a.out
set -euo pipefail

: "${HPO_INFER_STORAGE:?export HPO_INFER_STORAGE=postgresql://USER:PASSWORD@HOST:5432/DB before sbatch}"
: "${STUDY_SPEC:?set STUDY_SPEC to a study spec file}"
if [ -n "${HPO_INFER_VENV:-}" ]; then
  # shellcheck disable=SC1091
  . "$HPO_INFER_VENV/bin/activate"
fi
export VLLM_CACHE_ROOT="${VLLM_CACHE_ROOT:-$HOME/.cache/vllm}"

hpo-infer db upgrade
# exec: SLURM's SIGTERM (--signal=B:...) reaches the agent itself.
exec hpo-infer worker "$STUDY_SPEC" --gpus-per-trial "${GPUS_PER_TRIAL:-1}"
