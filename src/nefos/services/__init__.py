"""Use cases. Each service owns its transactions; none imports FastAPI."""
