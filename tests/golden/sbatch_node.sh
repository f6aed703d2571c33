#!/bin/bash

# Parameters
#SBATCH --account=proj42
#SBATCH --cpus-per-task=32
#SBATCH --error=<folder>/jobs/%j/%j_0_log.err
#SBATCH --gpus-per-node=4
#SBATCH --job-name=study-example
#SBATCH --mem=240GB
#SBATCH --nodes=1
#SBATCH --open-mode=append
#SBATCH --output=<folder>/jobs/%j/%j_0_log.out
#SBATCH --partition=gpu-node
#SBATCH --signal=USR2@120
#SBATCH --time=480
#SBATCH --wckey=submitit

# setup
module load cuda 2>/dev/null || true
source .venv/bin/activate

# command
export SUBMITIT_EXECUTOR=slurm
srun --unbuffered --output <folder>/jobs/%j/%j_%t_log.out --error <folder>/jobs/%j/%j_%t_log.err python -u -m submitit.core._submit '%j'
