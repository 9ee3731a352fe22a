"""Training: the config of a run (YAML and command line, checked once), the trainer and its losses, packed batches, the reference cache, MADPO's margins and the fault tolerance of a run."""
