"""ASGI middleware in front of every route: request ids, versions, errors of last resort."""
