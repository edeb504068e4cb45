"""Offload checkpoints to S3-compatible object storage in the background.

:class:`S3Remote` is one ``s3://bucket/prefix``: a checkpoint file is uploaded in parts
(each part's Content-MD5 is checked by the server as it arrives), with its sha256 in the
object's metadata; after the upload the object is checked (size, sha256 metadata, and
the multipart ETag computed here from the parts' MD5s) before the manifest says
``uploaded``. A download is streamed to a temporary file, hashed, and refused unless
its sha256 is the manifest's.

:class:`Offloader` is a thread that uploads every live checkpoint the manifest has not
marked uploaded, newest first, then lets the store apply retention (local copies beyond
the newest ``keep`` are deleted only once uploaded). It works from the manifest, so a
process killed half-way through an upload uploads it again when it starts (the parts
left behind by the dead upload are aborted first).

Credentials come from boto3's usual chain (environment, ``~/.aws``, instance role);
they are never logged: errors are logged by their S3 code and message only.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any, BinaryIO

from sentinel.train.checkpoint import CheckpointError, CheckpointInfo, CheckpointStore

log = logging.getLogger(__name__)

# S3 parts are 5 MiB to 5 GiB (the last may be smaller); 64 MiB keeps a 6 GB checkpoint
# under 100 parts and a retried part cheap.
DEFAULT_PART_BYTES = 64 << 20
MIN_PART_BYTES = 5 << 20
# Read size when downloading and hashing.
READ_BYTES = 8 << 20
# After a failed upload the offloader waits this long, doubling up to the maximum, so a
# bucket that refuses writes costs one attempt a few minutes, not a busy loop.
RETRY_S = 5.0
MAX_RETRY_S = 300.0
META_SHA = "sha256"


class OffloadError(CheckpointError):
    """An upload, check or download failed; the message says which object and why."""


def _s3_error(e: Exception) -> str:
    """Describe a boto3 error by its code and message only (never the request's headers)."""
    resp = getattr(e, "response", None)
    if isinstance(resp, dict) and isinstance(resp.get("Error"), dict):
        err = resp["Error"]
        return f"{err.get('Code', '?')}: {err.get('Message', '')}".strip()
    return f"{type(e).__name__}: {e}"


class S3Remote:
    """Checkpoint files under ``s3://bucket/prefix`` (boto3; any S3-compatible endpoint)."""

    def __init__(self, url: str, *, endpoint_url: str | None = None, region: str | None = None,
                 part_bytes: int = DEFAULT_PART_BYTES, create_bucket: bool = False) -> None:
        if not url.startswith("s3://") or not url[5:].split("/", 1)[0]:
            raise ValueError(f"checkpoint remote {url!r}: expected s3://BUCKET[/PREFIX]")
        if part_bytes < MIN_PART_BYTES:
            raise ValueError(f"part_bytes must be >= {MIN_PART_BYTES} (S3's minimum part), "
                             f"got {part_bytes}")
        try:
            import boto3
        except ImportError:
            raise OffloadError("offloading checkpoints needs boto3: pip install "
                               "'sentinel[offload]'") from None
        bucket, _, prefix = url[5:].partition("/")
        self.url, self.bucket, self.prefix = url, bucket, prefix.strip("/")
        self.part_bytes = part_bytes
        # The default chain: AWS_* environment, ~/.aws/{credentials,config}, instance role.
        self.client = boto3.session.Session(region_name=region).client(
            "s3", endpoint_url=endpoint_url)
        if create_bucket:
            self.client.create_bucket(Bucket=bucket)

    def key(self, name: str) -> str:
        """Return the object key of checkpoint file ``name``."""
        return f"{self.prefix}/{name}" if self.prefix else name

    def _abort_stale(self, key: str) -> None:
        """Abort unfinished multipart uploads of ``key`` (left by a killed process).

        Best effort: credentials without s3:ListBucketMultipartUploads still upload, and a
        bucket lifecycle rule (AbortIncompleteMultipartUpload) is the backstop.
        """
        try:
            resp = self.client.list_multipart_uploads(Bucket=self.bucket, Prefix=key)
        except Exception as e:  # noqa: BLE001 - botocore raises many kinds
            log.info("cannot list unfinished uploads of %s/%s (%s); uploading anyway",
                     self.url, key, _s3_error(e))
            return
        for u in resp.get("Uploads", []):
            if u["Key"] == key:
                self.client.abort_multipart_upload(Bucket=self.bucket, Key=key,
                                                   UploadId=u["UploadId"])

    def upload(self, path: Path, name: str, sha256: str) -> None:
        """Upload ``path`` as ``name`` in parts, then check the object; OffloadError if not."""
        key = self.key(name)
        try:
            self._abort_stale(key)
            up = self.client.create_multipart_upload(Bucket=self.bucket, Key=key,
                                                     Metadata={META_SHA: sha256})
            uid = up["UploadId"]
            try:
                parts, md5s = self._upload_parts(path, key, uid)
                self.client.complete_multipart_upload(
                    Bucket=self.bucket, Key=key, UploadId=uid,
                    MultipartUpload={"Parts": parts})
            except BaseException:
                self.client.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=uid)
                raise
        except OffloadError:
            raise
        except Exception as e:  # noqa: BLE001 - botocore raises many kinds
            raise OffloadError(f"upload of {path} to {self.url} failed ({_s3_error(e)})"
                               ) from None
        self.check(name, path.stat().st_size, sha256, md5s)

    def _upload_parts(self, path: Path, key: str, uid: str
                      ) -> tuple[list[dict[str, Any]], list[bytes]]:
        parts: list[dict[str, Any]] = []
        md5s: list[bytes] = []
        with open(path, "rb") as f:
            while chunk := f.read(self.part_bytes):
                md5 = hashlib.md5(chunk, usedforsecurity=False).digest()
                resp = self.client.upload_part(
                    Bucket=self.bucket, Key=key, UploadId=uid, PartNumber=len(parts) + 1,
                    Body=chunk, ContentMD5=base64.b64encode(md5).decode("ascii"))
                parts.append({"PartNumber": len(parts) + 1, "ETag": resp["ETag"]})
                md5s.append(md5)
        if not parts:  # an empty file is one empty part
            resp = self.client.upload_part(Bucket=self.bucket, Key=key, UploadId=uid,
                                           PartNumber=1, Body=b"")
            parts.append({"PartNumber": 1, "ETag": resp["ETag"]})
            md5s.append(hashlib.md5(b"", usedforsecurity=False).digest())
        return parts, md5s

    def check(self, name: str, size: int, sha256: str, md5s: list[bytes] | None = None) -> None:
        """Raise OffloadError unless object ``name`` has this size and sha256.

        With the parts' MD5s (just uploaded) the multipart ETag is checked too; a store
        whose ETags are not MD5-based (SSE-KMS) is read back and hashed instead.
        """
        key = self.key(name)
        try:
            head = self.client.head_object(Bucket=self.bucket, Key=key)
        except Exception as e:  # noqa: BLE001 - botocore raises many kinds
            raise OffloadError(f"{self.url}/{name}: cannot be read ({_s3_error(e)})") from None
        where = f"{self.url}/{name}"
        if head.get("ContentLength") != size:
            raise OffloadError(f"{where} is {head.get('ContentLength')} bytes, the manifest "
                               f"says {size}")
        if head.get("Metadata", {}).get(META_SHA) != sha256:
            raise OffloadError(f"{where} does not carry the manifest's sha256")
        if md5s is None:
            return
        etag = str(head.get("ETag", "")).strip('"')
        want = hashlib.md5(b"".join(md5s), usedforsecurity=False).hexdigest()
        if etag == f"{want}-{len(md5s)}":
            return
        if etag.endswith(f"-{len(md5s)}") and len(etag) == len(want) + 1 + len(str(len(md5s))):
            raise OffloadError(f"{where}: ETag {etag} is not that of the uploaded parts")
        digest = self._hash_object(key)  # ETag not MD5-based: read it back
        if digest != sha256:
            raise OffloadError(f"{where} has sha256 {digest[:16]}..., the manifest says "
                               f"{sha256[:16]}...")

    def _hash_object(self, key: str) -> str:
        sha = hashlib.sha256()
        body = self.client.get_object(Bucket=self.bucket, Key=key)["Body"]
        while chunk := body.read(READ_BYTES):
            sha.update(chunk)
        return sha.hexdigest()

    def download(self, name: str, out: BinaryIO, size: int, sha256: str) -> None:
        """Write object ``name`` to ``out``; OffloadError unless its size and sha256 match."""
        sha, n = hashlib.sha256(), 0
        try:
            body = self.client.get_object(Bucket=self.bucket, Key=self.key(name))["Body"]
            while chunk := body.read(READ_BYTES):
                sha.update(chunk)
                n += len(chunk)
                out.write(chunk)
        except Exception as e:  # noqa: BLE001 - botocore raises many kinds
            raise OffloadError(f"{self.url}/{name}: download failed ({_s3_error(e)})"
                               ) from None
        if n != size or sha.hexdigest() != sha256:
            raise OffloadError(f"{self.url}/{name}: downloaded {n} bytes with sha256 "
                               f"{sha.hexdigest()[:16]}..., the manifest says {size} bytes, "
                               f"{sha256[:16]}... (refused)")


class Offloader:
    """Upload the store's checkpoints in a background thread; local retention follows."""

    def __init__(self, store: CheckpointStore, remote: S3Remote, *,
                 retry_s: float = RETRY_S) -> None:
        if not store.writer:
            raise ValueError("only the writing rank offloads (store opened with writer=False)")
        self.store, self.remote = store, remote
        store.remote = remote
        self.retry_s = retry_s
        self.last_error: str | None = None
        self.uploaded: list[tuple[int, float, int]] = []  # (step, seconds, bytes), newest last
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._idle = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="checkpoint-offload",
                                        daemon=True)
        self._thread.start()

    def poke(self) -> None:
        """Look for checkpoints to upload now (after a save)."""
        self._idle.clear()
        self._wake.set()

    def _todo(self) -> list[CheckpointInfo]:
        return [c for c in reversed(self.store.checkpoints()) if c.local and not c.uploaded]

    def _loop(self) -> None:
        delay = self.retry_s
        while not self._stop.is_set():
            self._wake.clear()
            failed = False
            try:
                for c in self._todo():
                    if self._stop.is_set():
                        break
                    self._upload(c)
            except CheckpointError as e:
                failed = True
                if e.args[0] != self.last_error:
                    log.error("checkpoint offload: %s; local copies are kept, retrying", e)
                self.last_error = str(e)
            if failed:
                self._stop.wait(delay)
                delay = min(delay * 2, MAX_RETRY_S)
                continue
            delay, self.last_error = self.retry_s, None
            self._idle.set()
            self._wake.wait()

    def _upload(self, c: CheckpointInfo) -> None:
        t0 = time.perf_counter()
        for name, _, sha in c.parts():  # a sharded one: every shard, then it counts
            self.remote.upload(self.store.dir / name, name, sha)
        self.store.mark_uploaded(c.file)
        self.uploaded = [*self.uploaded[-63:], (c.step, time.perf_counter() - t0, c.size)]
        log.info("checkpoint step %d uploaded to %s (%d bytes)", c.step, self.remote.url,
                 c.size)

    def wait_idle(self, timeout: float) -> bool:
        """Wait until nothing is left to upload; False after ``timeout`` (or on failures)."""
        self.poke()
        return self._idle.wait(timeout)

    def close(self, timeout: float | None = None) -> None:
        """Stop after the upload under way (an unfinished one is redone at the next start)."""
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout)


def remote_from_env(environ: dict[str, str] | None = None) -> S3Remote | None:
    """Return the remote named by SENTINEL_CHECKPOINT_URL (and _ENDPOINT), or None."""
    env = os.environ if environ is None else environ
    url = env.get("SENTINEL_CHECKPOINT_URL", "")
    if not url:
        return None
    return S3Remote(url, endpoint_url=env.get("SENTINEL_CHECKPOINT_ENDPOINT") or None)
