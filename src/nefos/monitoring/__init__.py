"""Monitoring: collectors -> time series -> alerts (the "VM Data Service" of seed 000).

``types`` holds what its parts share: a ``Sample`` and the listener protocol the
collector calls after each pass (the alert engine is one).
"""
