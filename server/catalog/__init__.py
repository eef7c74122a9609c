"""The model store (`pomar models`): stored models, their facts, conversions and exports."""

from server.catalog.store import (
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
