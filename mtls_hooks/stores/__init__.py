"""Stores: the dedupe protocol (claim, complete, release) and its backends. Builds on the
core only.
"""
