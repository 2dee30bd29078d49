"""The result cache: `key` says what a request is, `store` keeps what it made."""

from hotfolder.cache.key import (KEY_SCHEMA, cache_key, derived_name, file_sha256, model_identity, reads_cache,
                                 writes_cache)
from hotfolder.cache.store import VIDEO, CacheEntry, CacheStats, PruneResult, ResultCache

__all__ = ["KEY_SCHEMA", "VIDEO", "CacheEntry", "CacheStats", "PruneResult", "ResultCache", "cache_key", "derived_name",
           "file_sha256", "model_identity", "reads_cache", "writes_cache"]
