"""Measurements: what `distill bench` times (options, timing of our steps, the usual recipe in reference, one
run and its table in report) and the GPU script's steps and summary (gpu)."""
