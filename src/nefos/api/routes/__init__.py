"""Routes, one module a resource. Each is thin: parse, authorize, call a service."""
