"""Domain errors shared by the API and the CLI: each names the field at fault and the reason."""

from __future__ import annotations


class ServiceError(Exception):
    """Base for errors a caller can fix; `status` is the HTTP status the API answers with."""

    status = 400

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason

    def as_detail(self) -> list[dict[str, object]]:
        """FastAPI-style error body, so every 4xx has one shape."""
        return [{"loc": self.field.split("."), "msg": self.reason, "type": type(self).__name__}]


class NotFound(ServiceError):
    status = 404


class Conflict(ServiceError):
    status = 409


class Invalid(ServiceError):
    status = 422
