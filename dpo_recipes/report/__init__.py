"""Reporting: the data audit, the held-out evaluation (generations, judge, statistics), its Markdown, the run's record (manifest, plots) and model card, and the end of a run."""
