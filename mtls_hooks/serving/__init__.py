"""Serving: the pinned Hypercorn integration, its typed configuration, TLS material reload
and the multi-worker supervisor. Builds on the core only.
"""
