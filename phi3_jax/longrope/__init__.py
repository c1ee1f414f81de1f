"""LongRoPE (arXiv 2402.13753): the evolutionary search of per-dimension RoPE rescale factors
for a longer context, its seeds (Position Interpolation, NTK-aware, YaRN) and its fitness."""
