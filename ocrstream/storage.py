"""Object store access (any S3 API: SeaweedFS, MinIO, AWS S3) through the minio client."""

from __future__ import annotations

import io
import posixpath
import ssl
import unicodedata
from dataclasses import dataclass

import certifi
import urllib3
from minio import Minio
from minio.error import S3Error

from .errors import OcrstreamError, ReasonCode
from .settings import Settings

_MISSING = {"NoSuchKey", "NoSuchBucket", "NoSuchVersion"}


def validate_key(key: str, prefix: str = "") -> str:
    """Check an object key taken from a message.

    Keys are opaque in S3, but ``..`` segments, absolute paths, backslashes and
    control characters are refused so that no tool that mirrors keys to a
    filesystem can be led outside its folder.

    Returns:
        the key, NFC-normalized.

    Raises:
        OcrstreamError: ``invalid_key``.
    """
    norm = unicodedata.normalize("NFC", key)
    if not norm or len(norm.encode()) > 1024:
        raise OcrstreamError(ReasonCode.INVALID_KEY, "object key is empty or longer than 1024 bytes")
    if norm.startswith("/") or "\\" in norm or any(ord(c) < 32 or ord(c) == 127 for c in norm):
        raise OcrstreamError(ReasonCode.INVALID_KEY, f"object key {norm!r} is absolute or has control characters")
    if any(part in ("..", ".") for part in norm.split("/")):
        raise OcrstreamError(ReasonCode.INVALID_KEY, f"object key {norm!r} has a '.' or '..' segment")
    if prefix and not posixpath.normpath(norm).startswith(prefix.rstrip("/")):
        raise OcrstreamError(ReasonCode.INVALID_KEY, f"object key {norm!r} is outside prefix {prefix!r}")
    return norm


@dataclass(frozen=True)
class ObjectInfo:
    """Metadata of a stored object."""

    bucket: str
    key: str
    size: int
    etag: str
    version_id: str | None
    content_type: str | None


class ObjectStore:
    """Thin wrapper over :class:`minio.Minio` that maps S3 errors to reason codes.

    Transient network errors are retried by urllib3 (3 tries, backoff); a
    missing object raises ``object_not_found``; other failures raise
    ``storage_error`` marked transient.
    """

    def __init__(self, s: Settings):
        self.settings = s
        # urllib3 retries connection errors and 5xx with backoff: transient faults heal here.
        http = urllib3.PoolManager(
            retries=urllib3.Retry(total=3, backoff_factor=0.2, status_forcelist=[500, 502, 503, 504]),
            timeout=urllib3.Timeout(connect=5, read=60),
            maxsize=16,
            **({"ssl_context": ssl.create_default_context(cafile=s.s3_ca_file or certifi.where())} if s.s3_secure else {}),
        )
        self.client = Minio(
            s.s3_endpoint,
            access_key=s.s3_access_key.get_secret_value(),
            secret_key=s.s3_secret_key.get_secret_value(),
            secure=s.s3_secure,
            region=s.s3_region,
            http_client=http,
        )

    def ensure_bucket(self, bucket: str | None = None) -> None:
        """Create the bucket if it does not exist."""
        bucket = bucket or self.settings.bucket
        try:
            if not self.client.bucket_exists(bucket):
                self.client.make_bucket(bucket)
        except S3Error as exc:
            if exc.code not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                raise self._error(exc, bucket, "") from None

    def put_bytes(self, key: str, data: bytes, content_type: str = "application/octet-stream",
                  bucket: str | None = None) -> ObjectInfo:
        """Upload bytes; returns the stored object's ETag and version."""
        bucket = bucket or self.settings.bucket
        try:
            res = self.client.put_object(bucket, key, io.BytesIO(data), len(data), content_type=content_type)
        except S3Error as exc:
            raise self._error(exc, bucket, key) from None
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise OcrstreamError(ReasonCode.STORAGE_ERROR, f"upload failed: {type(exc).__name__}", transient=True) from None
        return ObjectInfo(bucket, key, len(data), res.etag, res.version_id, content_type)

    def stat(self, bucket: str, key: str, version_id: str | None = None) -> ObjectInfo:
        """Metadata of an object.

        Raises:
            OcrstreamError: ``object_not_found``, ``storage_error`` (transient).
        """
        try:
            st = self.client.stat_object(bucket, key, version_id=version_id)
        except S3Error as exc:
            raise self._error(exc, bucket, key) from None
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise OcrstreamError(ReasonCode.STORAGE_ERROR, f"stat failed: {type(exc).__name__}", transient=True) from None
        return ObjectInfo(bucket, key, st.size or 0, (st.etag or "").strip('"'), st.version_id, st.content_type)

    def get_bytes(self, bucket: str, key: str, max_bytes: int, version_id: str | None = None) -> bytes:
        """Download a whole object, refusing objects over ``max_bytes``.

        Raises:
            OcrstreamError: ``object_not_found``, ``object_too_large``, ``storage_error`` (transient).
        """
        info = self.stat(bucket, key, version_id)
        if info.size > max_bytes:
            raise OcrstreamError(ReasonCode.OBJECT_TOO_LARGE, f"object is {info.size} bytes, limit {max_bytes}")
        try:
            resp = self.client.get_object(bucket, key, version_id=version_id)
            try:
                data = resp.read(max_bytes + 1)
            finally:
                resp.close()
                resp.release_conn()
        except S3Error as exc:
            raise self._error(exc, bucket, key) from None
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise OcrstreamError(ReasonCode.STORAGE_ERROR, f"download failed: {type(exc).__name__}", transient=True) from None
        if len(data) > max_bytes:
            raise OcrstreamError(ReasonCode.OBJECT_TOO_LARGE, f"object is over {max_bytes} bytes")
        return data

    def list(self, prefix: str, bucket: str | None = None) -> list[ObjectInfo]:
        """All objects under a prefix (recursive), with ETags."""
        bucket = bucket or self.settings.bucket
        try:
            return [
                ObjectInfo(bucket, o.object_name, o.size or 0, (o.etag or "").strip('"'), o.version_id, None)
                for o in self.client.list_objects(bucket, prefix=prefix, recursive=True)
                if not o.is_dir
            ]
        except S3Error as exc:
            raise self._error(exc, bucket, prefix) from None

    @staticmethod
    def _error(exc: S3Error, bucket: str, key: str) -> OcrstreamError:
        if exc.code in _MISSING:
            return OcrstreamError(ReasonCode.OBJECT_NOT_FOUND, f"s3://{bucket}/{key} does not exist ({exc.code})")
        return OcrstreamError(ReasonCode.STORAGE_ERROR, f"s3://{bucket}/{key}: {exc.code}", transient=True)
