"""Using a trained student: predict classifies files and archives; export writes ONNX, TorchScript or .pt2
with the preprocessing folded in; formats names what they write (torch-free, for the command line)."""
