"""Modalities: how each kind of input is decoded, stored, augmented and batched."""
