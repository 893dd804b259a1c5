"""`chex demo`: synthetic data -> training -> checks of the trained model against trivial baselines."""
