"""The model lifecycle: the store, loading, residency, self-checks, conversions, `ft:` models."""

from server.models.store import (
    MANIFEST,
    CatalogEntry,
    CatalogError,
    ModelCatalog,
    ModelFormat,
    ModelSource,
    folder_name,
    folder_size,
    validate_id,
)

__all__ = [
    "MANIFEST",
    "CatalogEntry",
    "CatalogError",
    "ModelCatalog",
    "ModelFormat",
    "ModelSource",
    "folder_name",
    "folder_size",
    "validate_id",
]
