"""The papers' analyses (feature overlap, mask IoU, LAPE neurons, LSAR subspaces): built on the engine's collection pass."""
