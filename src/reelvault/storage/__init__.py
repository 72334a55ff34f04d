"""Object storage: the untrusted place ciphertext is kept.

The role is :class:`ObjectStore` (see :mod:`reelvault.storage.base` for the contract:
visibility at completion, bounded memory, one GET per range read). Backends:

* :class:`S3ObjectStore`: AWS S3 or any S3-compatible store, through boto3.
* :class:`MemoryObjectStore`: an in-memory fake with the same semantics that records what
  it was asked, for the tests of the layers above.

Both pass the shared suite in :mod:`reelvault.storage.conformance`, which third-party
backends can run too. :mod:`reelvault.storage.seaweed` starts a local SeaweedFS for
development and integration tests; neither is imported here, as they serve tests and
tooling rather than the service.
"""

from reelvault.storage.base import (
    DEFAULT_MAX_IN_FLIGHT,
    DEFAULT_PART_SIZE,
    MIN_PART_SIZE,
    PART_GROWTH_EVERY,
    STREAM_CHUNK_SIZE,
    BufferedUpload,
    BytesLike,
    CompletedPart,
    MultipartUploadInfo,
    ObjectInfo,
    ObjectStore,
    PartSink,
    Upload,
    max_object_size,
    part_size_for,
    write_all,
)
from reelvault.storage.memory import MemoryObjectStore, MemoryStats, RangeRead
from reelvault.storage.s3 import S3ObjectStore

__all__ = [
    "BufferedUpload",
    "BytesLike",
    "CompletedPart",
    "DEFAULT_MAX_IN_FLIGHT",
    "DEFAULT_PART_SIZE",
    "MIN_PART_SIZE",
    "MemoryObjectStore",
    "MemoryStats",
    "MultipartUploadInfo",
    "ObjectInfo",
    "ObjectStore",
    "PART_GROWTH_EVERY",
    "PartSink",
    "RangeRead",
    "S3ObjectStore",
    "STREAM_CHUNK_SIZE",
    "Upload",
    "max_object_size",
    "part_size_for",
    "write_all",
]
