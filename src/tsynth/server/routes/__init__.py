"""The routes of ``tsynth serve``, one router per resource: :mod:`.files`, :mod:`.jobs` (fine-tuning jobs),
:mod:`.models` and :mod:`.chat` (chat completions). :func:`tsynth.server.app.create_app` mounts them in this order."""

from . import chat, files, jobs, models

ROUTERS = [files.router, jobs.router, models.router, chat.router]

__all__ = ["ROUTERS"]
