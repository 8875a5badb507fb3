"""The TRL stack: TRL's SFTTrainer as users run it (stack.py), its options as data (config.py),
the cell's batches as its dataset (data.py)."""
