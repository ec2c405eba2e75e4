"""The ``mtls-hooks`` command line: a thin layer over the public API, at the top of the
import graph.
"""
