"""Training the speech adapter: alignment targets, the training loop, export of a run."""
