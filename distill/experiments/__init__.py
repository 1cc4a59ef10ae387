"""Whole experiments over runs: the pipeline (plan: the TOML file read and checked; pipeline: the stages run)
and the comparison of finished runs (compare, its charts in chart)."""
