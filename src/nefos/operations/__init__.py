"""Operations: long actions as database rows, claimed and run by workers."""

from nefos.operations.queue import OpStatus, OpView, enqueue
from nefos.operations.worker import OpContext, Retry, Workers

__all__ = ["OpContext", "OpStatus", "OpView", "Retry", "Workers", "enqueue"]
