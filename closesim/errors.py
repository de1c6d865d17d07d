"""Errors the simulator answers with, in Close's JSON shapes."""

from __future__ import annotations

from typing import Any


class ApiError(Exception):
    """An error that becomes an HTTP response."""

    status = 500

    def body(self) -> dict[str, Any]:
        return {"error": str(self)}


class ValidationFailed(ApiError):
    """400 with Close's `errors` / `field-errors` body."""

    status = 400

    def __init__(self, errors: list[str] | None = None, field_errors: dict[str, Any] | None = None):
        self.errors = list(errors or [])
        self.field_errors = dict(field_errors or {})
        super().__init__("; ".join(self.errors) or repr(self.field_errors))

    def body(self) -> dict[str, Any]:
        return {"errors": self.errors, "field-errors": self.field_errors}


class NotFound(ApiError):
    status = 404


class MethodNotAllowed(ApiError):
    status = 405


class UnsupportedMediaType(ApiError):
    status = 415


class Unauthorized(ApiError):
    status = 401
