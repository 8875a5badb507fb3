"""compat-harness: a declarative compatibility matrix for fine-tuning Hugging Face LLMs.

One package per stage of the data path, each importing only from the stages below it
(`make lint` checks it with import-linter):

    spec -> cells -> run (a cell on one device or a rank pool) -> checks -> stacks -> records -> report

spec/ is the matrix, run/ runs cells, checks/ decides pass or fail, cellrun.py is what a check
receives, stacks/ is the software under test behind one seam, ckpt/ and data/ are what a cell
loads and trains on, report/ turns records into docs. The README's "Where things are" maps
questions to modules.
"""
