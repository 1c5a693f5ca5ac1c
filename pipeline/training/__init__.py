"""Training on Ray Train (TorchTrainer, Train V2) and the same loop without Ray."""
