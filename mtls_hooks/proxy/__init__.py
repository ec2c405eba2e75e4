"""Behind a TLS-terminating proxy: forwarded client-certificate headers and their re-verification.

Imports only the core (``tests/test_layers.py``); serving puts it in front of the app.
"""
