"""Shared pieces of BeatSight Federated: class list, features, model, checkpoints, `.bsm` I/O."""
