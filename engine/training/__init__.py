"""Training: losses, the optimisation loop and checkpoints shared by every stage that trains."""
