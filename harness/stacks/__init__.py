"""Stacks under test: what a user runs to fine-tune a model (harness/stacks/base.py: the seam).

Each stack places a model for a cell's (row, method, layout, tier), trains it, saves and loads
its own checkpoints and adapters, and describes the choices its script makes. `native` is plain
torch + transformers + peft, the reference. Checks talk to a stack only through the seam.
"""
