"""Launchers: local multi-process, Cloud TPU VM, SLURM (shell scripts), and sweeps over them."""
