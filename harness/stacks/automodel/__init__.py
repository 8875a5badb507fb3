"""The `automodel` stack: NVIDIA NeMo AutoModel's loading, LoRA, parallelizer and Checkpointer.

settings.py turns the matrix's entries into AutoModel's configuration (no AutoModel import);
stack.py is the seam's operations (harness/stacks/base.py).
"""
