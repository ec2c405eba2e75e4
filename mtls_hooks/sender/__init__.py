"""The sender: the sync and async twins over one base, the retry policy, failure
classification and delivery results. Builds on the core only; never imports Quart.
"""
