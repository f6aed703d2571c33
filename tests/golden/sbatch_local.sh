#!/bin/bash

# Parameters
#SBATCH --account=proj42
#SBATCH --cpus-per-task=1
#SBATCH --error=<folder>/jobs/%j/%j_0_log.err
#SBATCH --job-name=study-example
#SBATCH --nodes=1
#SBATCH --open-mode=append
#SBATCH --output=<folder>/jobs/%j/%j_0_log.out
#SBATCH --partition=debug
#SBATCH --signal=USR2@20
#SBATCH --time=30
#SBATCH --wckey=submitit

# setup

# command
export SUBMITIT_EXECUTOR=slurm
srun --unbuffered --output <folder>/jobs/%j/%j_%t_log.out --error <folder>/jobs/%j/%j_%t_log.err python -u -m submitit.core._submit '%j'
