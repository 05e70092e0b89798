"""What is written for people after a run: the HTML report and its charts, the profile
summaries, the run directory (log, used config, run data)."""
