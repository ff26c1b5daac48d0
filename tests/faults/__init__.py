"""The fault suite: every way of breaking the platform that was found by trying, kept fixed.

Each test reproduces one fault (a careless or hostile input, a crash at a bad moment, a full disk)
against the real code path and checks the promise in docs/reliability.md: a one-line error naming
the value (exit status 2), nothing lost or duplicated, a rerun that finishes.
"""
