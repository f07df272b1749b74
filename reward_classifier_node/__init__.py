"""Reward classifier: image success model, training/evaluation CLIs, and node."""
