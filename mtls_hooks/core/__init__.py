"""The shared security core: TLS contexts and pinning hooks, peer identity, pin and identity
policy, Standard Webhooks signing and keys, the exception hierarchy and problem details.

It imports neither Quart nor an HTTP client, and nothing else of mtls-hooks: every other part
builds on it (``tests/test_layers.py`` keeps it so).
"""
