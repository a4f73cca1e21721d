"""Compute drivers: the contract in :mod:`nefos.drivers.base`, one package per engine.

Drivers import nothing of Nefos above them (db, services, api, gateway, sdk, cli)
and nothing of each other; tests/test_architecture.py holds them to it.
"""
