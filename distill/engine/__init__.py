"""The engine: one run, or a group of runs trained together, from configs to results. build makes everything a
run needs after every check (checks) on a device (device), with its optimizer (optim); loop trains (one step,
one epoch), ema averages, evaluate scores; state holds a run and its checkpoints (checkpoint), folder its
run folder, log its progress and TensorBoard, results what a finished run reports; run ties them together.
The engine knows no experiment, benchmark or deployment code."""
