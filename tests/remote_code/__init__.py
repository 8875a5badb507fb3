"""Small hub-style remote-code models written for the tests (tests/test_remote_code.py).

Each folder is what a hub repository with `auto_map` holds: a configuration and a modeling file
that transformers imports only under trust_remote_code. The tests put them into a Hugging Face
cache snapshot of their own, so the harness finds them exactly as it finds cached hub code.
"""
