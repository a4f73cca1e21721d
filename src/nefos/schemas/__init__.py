"""Wire types shared by the API, the SDK and the CLI.

``<Thing>Create`` / ``<Thing>Update`` are request bodies (unknown fields are
rejected, so server-owned fields cannot be mass-assigned); ``<Thing>Public`` is
what the API returns.
"""
