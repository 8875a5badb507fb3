"""Running cells: the runner the pytest plugin calls, the persistent rank pool and its remote
nodes, the rendezvous of hosts, and which devices this machine has.

It turns a cell into an Outcome (pass, fail, skip, xfail) and never decides pass or fail itself:
that is a check's job (harness/checks). It knows no library under test beyond torch.distributed.
"""
