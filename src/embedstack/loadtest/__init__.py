"""The seed's scaling checklist as code: an open-loop load generator (`run.py`), the baseline
characterization that finds the peak sustainable rate and the constrained layer
(`characterize.py`), and the SLA verdict at a multiple of that peak (`verdict.py`).

Everything here talks to a running server over HTTP, like any client; `cli/loadtest.py` holds
the thin click commands.
"""
