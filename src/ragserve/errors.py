"""The one exception tree. Third-party errors are translated where they enter the package.

::

    RagserveError                      500  (message never shown to HTTP clients)
    ├── InvalidInput                   422  bad arguments, malformed filters, bad text
    │   └── PayloadTooLarge            413
    ├── NotFound                       404
    │   ├── UnknownModel                    name not in the catalog (lists the valid ones)
    │   ├── CollectionNotFound
    │   └── DocumentNotFound
    ├── Conflict                       409  e.g. collection exists with another embedder
    ├── Unauthorized                   401
    ├── Forbidden                      403  a valid key whose scope does not cover the request
    ├── Overloaded                     429  bounded work queue is full (Retry-After)
    ├── InsufficientStorage            507  the disk is full: the write was not stored
    └── Unavailable                    503  not ready, store down
        ├── StoreDamaged                    a damaged database file: the store is read-only
        ├── ModelNotCached                  `ragserve models pull NAME` fixes it
        ├── ModelIntegrityError             a cached file no longer matches its hash
        ├── ModelSourceError                no source could provide a model
        └── ModelUnavailable                a model server is down, slow or refused the call
            └── ModelMismatch               it serves another model (dimension, name)
"""

from __future__ import annotations


class RagserveError(Exception):
    """Base of every error the package raises on purpose."""

    status_code = 500
    error_type = "internal_error"
    #: Whether ``str(self)`` may be shown to an HTTP client.
    public = False

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidInput(RagserveError):
    status_code = 422
    error_type = "invalid_request"
    public = True


class PayloadTooLarge(InvalidInput):
    status_code = 413
    error_type = "payload_too_large"


class NotFound(RagserveError):
    status_code = 404
    error_type = "not_found"
    public = True


class UnknownModel(NotFound):
    error_type = "unknown_model"


class CollectionNotFound(NotFound):
    error_type = "collection_not_found"


class DocumentNotFound(NotFound):
    error_type = "document_not_found"


class Conflict(RagserveError):
    status_code = 409
    error_type = "conflict"
    public = True


class Unauthorized(RagserveError):
    status_code = 401
    error_type = "unauthorized"
    public = True


class Forbidden(RagserveError):
    status_code = 403
    error_type = "forbidden"
    public = True


class Overloaded(RagserveError):
    status_code = 429
    error_type = "overloaded"
    public = True

    def __init__(self, message: str, retry_after: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class ClientGone(Overloaded):
    """The client went away: the rest of its work is skipped (nobody reads this answer)."""


class Unavailable(RagserveError):
    status_code = 503
    error_type = "unavailable"
    public = True


class InsufficientStorage(RagserveError):
    status_code = 507
    error_type = "insufficient_storage"
    public = True


class StoreDamaged(Unavailable):
    error_type = "store_damaged"


class ModelNotCached(Unavailable):
    error_type = "model_not_cached"


class ModelIntegrityError(Unavailable):
    error_type = "model_integrity"


class ModelSourceError(Unavailable):
    error_type = "model_source"


class ModelUnavailable(Unavailable):
    """A remote model server (``RAGSERVE_EMBEDDER_URL`` / ``RAGSERVE_RERANKER_URL``) could not
    answer within the timeout: down, slow, overloaded, or refusing the key."""

    error_type = "model_unavailable"


class ModelMismatch(ModelUnavailable):
    """A model server serves another model than the one configured (dimension or name)."""

    error_type = "model_mismatch"
