"""The ``multiprocessing`` and ``auto`` modes: a pool of local worker processes. ``manager`` (the
backend) is mechanism (pipes, sentinels, pickling); ``policy`` the pure rules it follows (batch
size, prefetch, retry or fail); ``protocol`` the records parent and child exchange; ``processes``
the process handles; ``ledger`` the jobs in flight; ``child`` the loop a worker runs."""
