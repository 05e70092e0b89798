"""What the caller learns of its runs: the records of every task run and failure (the monitor),
the task events posted to the journal and to callbacks, progress bars."""
