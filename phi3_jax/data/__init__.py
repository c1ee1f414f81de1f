"""Data: offline shard preparation (datatrove), quality classifier, synthetic text, tokenizer."""
