"""Post-training: the Phi-3 chat format, SFT and DPO on the training loop."""
