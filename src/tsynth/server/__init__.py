"""``tsynth serve``: an OpenAI-compatible fine-tuning and chat-completion server over the local backend.

``create_app(data_dir, api_key=None)`` builds the ASGI app; ``serve(host, port, data_dir, api_key)``
runs it with uvicorn. See :mod:`tsynth.server.app` for the API and :mod:`tsynth.server.worker` for
jobs and the restart policy.
"""

from .app import create_app, serve

__all__ = ["create_app", "serve"]
