"""The task graph, pure: tasks and Delayed values, their keys (tokenize), the fusion of
sequential chains into units of work (factorize), tiles of arrays. No processes, no threads, no I/O
but reading the headers of tile sources."""
