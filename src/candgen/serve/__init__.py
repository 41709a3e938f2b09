"""The HTTP service: FastAPI app, schemas, metrics and the uvicorn runner, built around the `Engine` protocol.

Nothing else in candgen imports this package (except `serve/protocol.py`, which holds only plain values).
"""
