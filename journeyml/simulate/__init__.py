"""The journey simulator: a multi-channel world with ground truth."""
