"""Data: sources (hub, files, mixtures), reading files, formats normalised to pairs, tokenization, and the preparation that puts them in order (held-out split, mixtures, the counted drops)."""
