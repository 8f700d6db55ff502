"""`seglab serve`: a web page and an HTTP API over any model (FastAPI on uvicorn; `pip install seglab[serve]`).

`app.create_app(models, options)` builds the ASGI application; `batching.BatchQueue` batches concurrent requests
under a bounded queue.
"""
