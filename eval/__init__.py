"""Evaluation room: the multi-object bias probes of "CLIP Under the Microscope"."""
