"""Helpers several benchmarks share: child processes with Django set up, a free port, a process tree's memory, and
the reading study the portal benchmarks read."""
