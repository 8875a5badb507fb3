"""The reference stack, `native`: plain torch + transformers + peft, called as their docs say.

placement.py applies a layout (the documented call), methods.py applies SFT or LoRA, the shared
loop (harness/stacks/loop.py) trains, realshape.py builds a model at a real checkpoint's size.
"""
