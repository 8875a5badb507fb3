"""From records to docs: records written per cell, read back into frames, the history database,
diffs between runs, the nightly pipeline, and the rendered pages (llm.md, family pages, index.html).

Last stage of the data path. It never imports run or stacks (an import-linter contract): the
docs are made from what the records say, not from the code that produced them.
"""
