"""Augmentation on whole batches on the device: the ops (ops), TrivialAugment per image (trivial) and the
torch-free `--augment`/`--mix` parser (spec), which the front imports; this file imports nothing."""
