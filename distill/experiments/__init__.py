"""Whole experiments over runs: the pipeline (plan: the TOML file read and checked; pipeline: the stages run)
and the comparison of finished runs (compare: its entry points; runs: the runs and their predictions read;
links: gains, fidelity and seed aggregates; outputs: the charts and TensorBoard summary written, drawn by
chart; tables: the terminal and markdown tables)."""
