"""Metrics: Prometheus counters, histograms and gauges, their listener and expiry alarms.

Builds on the core only; the serving layer, the receiver, the sender and the delivery
workers record into it. Label values are bounded by construction: reasons, outcomes and
endpoint names from configuration, never a webhook id, a URL or an unverified subject.
"""
