"""Durable delivery: the outbox, its endpoint records and the delivery worker."""

from mtls_hooks.outbox._endpoint import Endpoint, RetrySettings
from mtls_hooks.outbox._outbox import AsyncOutbox, EndpointStatus, Outbox, UnknownEndpointError
from mtls_hooks.outbox._worker import DeliveryWorker, WorkerCounts

__all__ = [
    "AsyncOutbox",
    "DeliveryWorker",
    "Endpoint",
    "EndpointStatus",
    "Outbox",
    "RetrySettings",
    "UnknownEndpointError",
    "WorkerCounts",
]
