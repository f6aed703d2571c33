"""study: a hyperparameter and ablation harness for FusionDistill.

Train one expert per degradation, fuse their weights, distil the experts into the fused model, and
search every knob of that recipe with Optuna, on a laptop or a SLURM cluster.
"""

__version__ = "0.4.0"
__all__ = ["__version__"]
