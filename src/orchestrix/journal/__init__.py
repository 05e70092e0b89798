"""The durable record of a run: the journal of task states (an SQLite file written by a writer
process of its own), its event encoding, and the status read from it."""
