"""The matrix as data: its types, loading and validation, the cells it expands to, constraints and
claims.

First stage of the data path (matrix/*.toml -> Matrix -> cells). Nothing here imports torch or
peft (an import-linter contract in `make lint`): listing thousands of cells must stay fast, and a
mistake in the TOML must be reported before any library is touched. Of the harness it imports
only the bottom modules harness.failures and harness.cache. Its own modules import one another
without a cycle: matrix.py (the types) at the bottom, load.py (the one loader) at the top.
"""
