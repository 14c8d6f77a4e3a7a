"""Object store access (any S3 API: SeaweedFS, MinIO, AWS S3) through the minio client."""

from __future__ import annotations

import http.client
import io
import ssl
import unicodedata
from dataclasses import dataclass

import certifi
import urllib3
from minio import Minio
from minio.commonconfig import CopySource, Tags
from minio.error import InvalidResponseError, S3Error, ServerError
from minio.helpers import check_bucket_name, check_object_name

from .errors import OcrstreamError, ReasonCode
from .settings import Settings

_MISSING = {"NoSuchKey", "NoSuchBucket", "NoSuchVersion"}


def validate_key(key: str) -> str:
    """Check an object key taken from a message.

    Keys are opaque in S3, but ``..`` segments, absolute paths, backslashes and
    control characters are refused so that no tool that mirrors keys to a
    filesystem can be led outside its folder.

    The key is checked as it is and returned unchanged: S3 compares keys byte for
    byte, so a key in another Unicode normalization form (NFD file names from
    macOS) names another object. Its NFC form is checked too, in case a tool that
    normalizes keys mirrors it.

    Returns:
        the key, unchanged.

    Raises:
        OcrstreamError: ``invalid_key``.
    """
    if not isinstance(key, str):
        raise OcrstreamError(ReasonCode.INVALID_KEY, f"object key is a {type(key).__name__}, not a string")
    try:
        size = len(key.encode())
    except UnicodeEncodeError:
        raise OcrstreamError(ReasonCode.INVALID_KEY, f"object key {key!r} is not valid UTF-8 (lone surrogate)") from None
    if not key.strip() or size > 1024:
        raise OcrstreamError(ReasonCode.INVALID_KEY, "object key is empty, blank or longer than 1024 bytes")
    for form in {key, unicodedata.normalize("NFC", key)}:
        if form.startswith("/") or "\\" in form or any(ord(c) < 32 or ord(c) == 127 for c in form):
            raise OcrstreamError(ReasonCode.INVALID_KEY, f"object key {key!r} is absolute or has control characters")
        if any(part in ("..", ".") for part in form.split("/")):
            raise OcrstreamError(ReasonCode.INVALID_KEY, f"object key {key!r} has a '.' or '..' segment")
    return key


def validate_bucket(bucket: str) -> str:
    """Check a bucket name taken from a message against the S3 naming rules the
    client enforces (3-63 characters, lower-case letters, digits, ``.`` and ``-``,
    not an IP address).

    Returns:
        the name, unchanged.

    Raises:
        OcrstreamError: ``invalid_bucket``.
    """
    try:
        check_bucket_name(bucket)
    except (ValueError, TypeError, AttributeError) as exc:
        raise OcrstreamError(ReasonCode.INVALID_BUCKET, f"bucket name {bucket!r} is invalid: {exc}") from None
    return bucket


def _bare_etag(etag: str) -> str:
    """An ETag without the weak prefix and quotes, lower-case: for comparisons only (stored
    ETags keep their case, since document ids are derived from them)."""
    etag = etag.strip()
    etag = etag[2:] if etag[:2] in ("W/", "w/") else etag
    return etag.strip('"').lower()


@dataclass(frozen=True)
class ObjectInfo:
    """Metadata of a stored object."""

    bucket: str
    key: str
    size: int
    etag: str
    version_id: str | None
    content_type: str | None


def http_client(s: Settings, retries: urllib3.Retry | bool, connect_s: float = 5, read_s: float = 60,
                maxsize: int = 16) -> urllib3.PoolManager:
    """The HTTP client for the S3 endpoint: TLS verified against ``OCRSTREAM_S3_CA_FILE`` (else
    certifi's bundle) when ``OCRSTREAM_S3_SECURE``; timeouts in seconds."""
    return urllib3.PoolManager(
        retries=retries, timeout=urllib3.Timeout(connect=connect_s, read=read_s), maxsize=maxsize,
        **({"ssl_context": ssl.create_default_context(cafile=s.s3_ca_file or certifi.where())} if s.s3_secure else {}),
    )


class ObjectStore:
    """Thin wrapper over :class:`minio.Minio` that maps S3 errors to reason codes.

    Transient network errors are retried by urllib3 (3 tries, backoff); a
    missing object raises ``object_not_found``; other failures raise
    ``storage_error`` (transient for network errors and 5xx). No exception of
    the minio client or urllib3 leaves the public methods: invalid bucket names
    raise ``invalid_bucket``, invalid keys ``invalid_key``, anything unexpected
    ``storage_error``.
    """

    def __init__(self, s: Settings):
        self.settings = s
        # urllib3 retries connection errors and 5xx with backoff: transient faults heal here.
        http = http_client(s, urllib3.Retry(total=3, backoff_factor=0.2, status_forcelist=[500, 502, 503, 504]))
        self.client = Minio(
            s.s3_endpoint,
            access_key=s.s3_access_key.get_secret_value(),
            secret_key=s.s3_secret_key.get_secret_value(),
            secure=s.s3_secure,
            region=s.s3_region,
            http_client=http,
        )

    def ensure_bucket(self, bucket: str | None = None) -> None:
        """Create the bucket if it does not exist.

        Raises:
            OcrstreamError: ``invalid_bucket``, ``storage_error``.
        """
        bucket = validate_bucket(bucket or self.settings.bucket)
        try:
            if not self.client.bucket_exists(bucket):
                self.client.make_bucket(bucket)
        except S3Error as exc:
            if exc.code not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                raise self._error(exc, bucket, "") from None
        except Exception as exc:  # noqa: BLE001 - nothing of the client escapes (see the class docstring)
            raise self._error(exc, bucket, "", "create bucket") from None

    def put_bytes(self, key: str, data: bytes, content_type: str = "application/octet-stream",
                  bucket: str | None = None) -> ObjectInfo:
        """Upload bytes; returns the stored object's ETag and version.

        Raises:
            OcrstreamError: ``invalid_bucket``, ``invalid_key``, ``storage_error``.
        """
        bucket = validate_bucket(bucket or self.settings.bucket)
        self._check_key(key)
        try:
            res = self.client.put_object(bucket, key, io.BytesIO(data), len(data), content_type=content_type)
        except Exception as exc:  # noqa: BLE001 - nothing of the client escapes (see the class docstring)
            raise self._error(exc, bucket, key, "upload") from None
        return ObjectInfo(bucket, key, len(data), res.etag, res.version_id, content_type)

    def stat(self, bucket: str, key: str, version_id: str | None = None) -> ObjectInfo:
        """Metadata of an object.

        Raises:
            OcrstreamError: ``invalid_bucket``, ``invalid_key``, ``object_not_found``,
                ``storage_error`` (transient for network errors and 5xx).
        """
        validate_bucket(bucket)
        self._check_key(key)
        try:
            st = self.client.stat_object(bucket, key, version_id=version_id)
        except Exception as exc:  # noqa: BLE001 - nothing of the client escapes (see the class docstring)
            raise self._error(exc, bucket, key, "stat") from None
        return ObjectInfo(bucket, key, st.size or 0, (st.etag or "").strip('"'), st.version_id, st.content_type)

    def get_bytes(self, bucket: str, key: str, max_bytes: int, version_id: str | None = None,
                  etag: str | None = None) -> bytes:
        """Download a whole object, refusing objects over ``max_bytes``.

        Args:
            max_bytes: largest object accepted, bytes.
            version_id: that version (versioned buckets); None: the current one.
            etag: the ETag the reference was made with; when given, the download is
                conditional (``If-Match``) and the ETag of what was read is checked, so an
                object replaced since (unversioned buckets overwrite in place) is never
                read as if it were the referenced one.

        Raises:
            OcrstreamError: ``invalid_bucket``, ``invalid_key``, ``object_not_found``,
                ``object_changed`` (not transient: the referenced content is gone),
                ``object_too_large``, ``storage_error`` (transient for network errors and 5xx).
        """
        info = self.stat(bucket, key, version_id)
        if etag and info.etag and _bare_etag(info.etag) != _bare_etag(etag):
            raise self._changed(bucket, key, etag, info.etag)
        if info.size > max_bytes:
            raise OcrstreamError(ReasonCode.OBJECT_TOO_LARGE, f"object is {info.size} bytes, limit {max_bytes}")
        # If-Match compares the entity tag exactly: quoted, as the server sent it (case kept).
        headers = {"If-Match": '"' + etag.strip().removeprefix("W/").strip('"') + '"'} if etag else None
        try:
            resp = self.client.get_object(bucket, key, version_id=version_id, request_headers=headers)
            try:
                got = resp.headers.get("ETag")
                data = resp.read(max_bytes + 1)
            finally:
                resp.close()
                resp.release_conn()
        except Exception as exc:  # noqa: BLE001 - nothing of the client escapes (see the class docstring)
            raise self._error(exc, bucket, key, "download") from None
        if etag and got and _bare_etag(got) != _bare_etag(etag):
            raise self._changed(bucket, key, etag, got)
        if len(data) > max_bytes:
            raise OcrstreamError(ReasonCode.OBJECT_TOO_LARGE, f"object is over {max_bytes} bytes")
        return data

    def list(self, prefix: str, bucket: str | None = None) -> list[ObjectInfo]:
        """All objects under a prefix (recursive), with ETags.

        Raises:
            OcrstreamError: ``invalid_bucket``, ``object_not_found`` (no such bucket),
                ``storage_error`` (transient for network errors and 5xx).
        """
        bucket = validate_bucket(bucket or self.settings.bucket)
        try:
            return [
                ObjectInfo(bucket, o.object_name, o.size or 0, (o.etag or "").strip('"'), o.version_id, None)
                for o in self.client.list_objects(bucket, prefix=prefix, recursive=True)
                if not o.is_dir
            ]
        except Exception as exc:  # noqa: BLE001 - nothing of the client escapes (see the class docstring)
            raise self._error(exc, bucket, prefix, "list") from None

    def remove(self, bucket: str, key: str, version_id: str | None = None) -> None:
        """Delete an object (that version, in a versioned bucket); a missing object is not an error.

        Raises:
            OcrstreamError: ``invalid_bucket``, ``invalid_key``, ``storage_error``.
        """
        bucket = validate_bucket(bucket)
        self._check_key(key)
        try:
            self.client.remove_object(bucket, key, version_id=version_id)
        except Exception as exc:  # noqa: BLE001 - nothing of the client escapes (see the class docstring)
            raise self._error(exc, bucket, key, "delete") from None

    def set_tags(self, bucket: str, key: str, tags: dict[str, str], version_id: str | None = None) -> None:
        """Replace an object's tags (S3 ``PutObjectTagging``; at most 10, keys <= 128 and values <= 256 chars).

        Raises:
            OcrstreamError: ``invalid_bucket``, ``invalid_key``, ``object_not_found``, ``storage_error``.
        """
        bucket = validate_bucket(bucket)
        self._check_key(key)
        t = Tags.new_object_tags()
        t.update(tags)
        try:
            self.client.set_object_tags(bucket, key, t, version_id=version_id)
        except Exception as exc:  # noqa: BLE001 - nothing of the client escapes (see the class docstring)
            raise self._error(exc, bucket, key, "tag") from None

    def get_tags(self, bucket: str, key: str, version_id: str | None = None) -> dict[str, str]:
        """An object's tags (empty when it has none).

        Raises:
            OcrstreamError: ``invalid_bucket``, ``invalid_key``, ``object_not_found``, ``storage_error``.
        """
        bucket = validate_bucket(bucket)
        self._check_key(key)
        try:
            return dict(self.client.get_object_tags(bucket, key, version_id=version_id) or {})
        except Exception as exc:  # noqa: BLE001 - nothing of the client escapes (see the class docstring)
            raise self._error(exc, bucket, key, "read tags of") from None

    def copy(self, bucket: str, key: str, to_key: str, version_id: str | None = None) -> None:
        """Server-side copy of ``key`` (that version) to ``to_key`` in the same bucket (objects up to 5 GiB).

        Raises:
            OcrstreamError: ``invalid_bucket``, ``invalid_key``, ``object_not_found``, ``storage_error``.
        """
        bucket = validate_bucket(bucket)
        self._check_key(key)
        self._check_key(to_key)
        try:
            self.client.copy_object(bucket, to_key, CopySource(bucket, key, version_id=version_id))
        except Exception as exc:  # noqa: BLE001 - nothing of the client escapes (see the class docstring)
            raise self._error(exc, bucket, key, "copy") from None

    @staticmethod
    def _check_key(key: str) -> None:
        # What the client itself refuses with ValueError/TypeError (validate_key is stricter;
        # callers that take keys from messages use it first).
        try:
            check_object_name(key)
        except (ValueError, TypeError, AttributeError) as exc:
            raise OcrstreamError(ReasonCode.INVALID_KEY, f"object key {key!r} is invalid: {exc or 'empty'}") from None

    @staticmethod
    def _changed(bucket: str, key: str, wanted: str, found: str) -> OcrstreamError:
        return OcrstreamError(ReasonCode.OBJECT_CHANGED,
                              f"s3://{bucket}/{key} was replaced: ETag {_bare_etag(found)!r}, "
                              f"the reference has {_bare_etag(wanted)!r}")

    @staticmethod
    def _error(exc: BaseException, bucket: str, key: str, op: str = "request") -> OcrstreamError:
        """The :class:`OcrstreamError` for anything the minio client or urllib3 raised."""
        where = f"s3://{bucket}/{key}"
        if isinstance(exc, OcrstreamError):
            return exc
        if isinstance(exc, S3Error):
            if exc.code in _MISSING:
                return OcrstreamError(ReasonCode.OBJECT_NOT_FOUND, f"{where} does not exist ({exc.code})")
            if exc.code == "PreconditionFailed":
                return OcrstreamError(ReasonCode.OBJECT_CHANGED, f"{where} was replaced (ETag no longer matches)")
            if exc.code == "InvalidBucketName":
                return OcrstreamError(ReasonCode.INVALID_BUCKET, f"bucket name {bucket!r} is invalid")
            if exc.code in ("AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
                # The store's policy or the service's credentials: a retry cannot help.
                return OcrstreamError(ReasonCode.STORAGE_ERROR, f"{op} {where} refused by the object store "
                                                                f"({exc.code}): check the S3 policy of this role")
            return OcrstreamError(ReasonCode.STORAGE_ERROR, f"{where}: {exc.code}", transient=True)
        if isinstance(exc, (ServerError, InvalidResponseError)):
            status = exc.status_code if isinstance(exc, ServerError) else getattr(exc, "_code", 0)
            if status == 412:
                return OcrstreamError(ReasonCode.OBJECT_CHANGED, f"{where} was replaced (HTTP 412)")
            if status == 404:
                return OcrstreamError(ReasonCode.OBJECT_NOT_FOUND, f"{where} does not exist (HTTP 404)")
            return OcrstreamError(ReasonCode.STORAGE_ERROR, f"{op} {where} failed: HTTP {status}",
                                  transient=status == 429 or status >= 500)
        if isinstance(exc, (urllib3.exceptions.HTTPError, http.client.HTTPException, OSError)):
            return OcrstreamError(ReasonCode.STORAGE_ERROR, f"{op} failed: {type(exc).__name__}", transient=True)
        if isinstance(exc, (ValueError, TypeError)):
            return OcrstreamError(ReasonCode.STORAGE_ERROR, f"{op} {where} refused by the S3 client: {exc}")
        return OcrstreamError(ReasonCode.STORAGE_ERROR, f"{op} {where} failed: {type(exc).__name__}: {exc}")
