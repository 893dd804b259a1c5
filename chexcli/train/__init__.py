"""Training: recipes, supervisors and losses, the trainer loop, checkpoints, DDP."""
