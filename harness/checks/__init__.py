"""Checks decide pass or fail. Each module here holds one check's assertions."""
