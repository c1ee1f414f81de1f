"""An OpenAI-compatible generation server for phi3_jax models (`python -m phi3_jax.serve`).

engine: requests batched on the KV cache (generate_batch); api: the HTTP routes (aiohttp);
background: a server on its own thread, for tests, benchmarks and the data tools.
"""
