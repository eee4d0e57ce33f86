"""The HTTP API: the tutor's search and answers for any front-end, on the same code path as the chat.

`python -m rag serve` runs it with uvicorn (rag/api/server.py); `rag.api.app.create_app` builds the FastAPI
application over a `rag.api.service.TutorService`. Nothing is imported here, so that `python -m rag keys` stays quick.
"""
