"""Ablations: sweep files whose arms differ in one thing only (`python -m launch.ablation FILE`)."""
