"""The SLURM site presets that ship with `study`, installed as the package
study.slurm_presets (see pyproject.toml): `executor.slurm.preset: gpu` names gpu.yaml here."""
