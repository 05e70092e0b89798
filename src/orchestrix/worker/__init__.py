"""What runs inside any worker (a pool process, a dask worker, the caller in sequential
mode): running a unit of work, observing it (logs, profilers, time and memory), moving its data."""
