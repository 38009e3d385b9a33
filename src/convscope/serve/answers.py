"""Mistakes in requests, each with the HTTP status the server answers.

A :class:`Refused` is a :class:`~convscope.errors.ConvscopeError` (problem and fix, one paragraph)
that also carries its status; any other ``ConvscopeError`` from the library is answered 400.

Example::

    raise Missing("there is no image 'd99'", "GET /api/images lists the images.")   # 404
"""

from __future__ import annotations

from convscope.errors import ConvscopeError


class Refused(ConvscopeError):
    """A request the server refuses with ``status`` (400 unless a subclass says otherwise)."""

    status = 400

    def __init__(self, problem: str, fix: str, status: int | None = None) -> None:
        super().__init__(problem, fix)
        if status is not None:
            self.status = status


class Missing(Refused):
    """The request names an image, job or file that does not exist: 404."""

    status = 404
