"""phi3_jax: pretraining the Phi-3 family in JAX/Flax."""
