"""A local directory or an s3:// prefix behind one small interface.

batch.py reads inputs and publishes outputs through it; fetch.py copies a
model directory with it. Names are '/'-separated paths relative to the root.
S3 credentials come from boto3's default chain (IRSA in the pods: the web
identity token file and role ARN in the environment); AWS_ENDPOINT_URL_S3
points boto3 at another endpoint.

Publishing is all-or-nothing in both backends: locally a temp file renamed
into place; on S3 a single PutObject of the finished file, because an object
becomes visible only when its upload completes.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path, PurePosixPath
from typing import IO, Any

from .common import RetryableError, UsageError, atomic_output


class StorageError(RetryableError):
    """A storage failure a retry may fix (network, throttling, 5xx)."""


def is_s3(uri: str) -> bool:
    return uri.startswith("s3://")


def _check_name(name: str) -> str:
    """Refuse names that would escape the destination (`..`, absolute paths)."""
    path = PurePosixPath(name)
    if path.is_absolute() or ".." in path.parts or not path.parts:
        raise UsageError(f"refusing unsafe object name {name!r}")
    return name


class Store:
    def list(self, suffix: str = "") -> list[str]:
        """Names under the root ending with `suffix`, sorted, hidden names excluded."""
        raise NotImplementedError

    def lines(self, name: str) -> Iterator[bytes]:
        raise NotImplementedError

    def exists(self, name: str) -> bool:
        raise NotImplementedError

    def download(self, name: str, dest: Path) -> None:
        raise NotImplementedError

    def publisher(self, name: str) -> Any:
        """Context manager yielding a binary file; `name` appears only on success."""
        raise NotImplementedError

    def describe(self, name: str = "") -> str:
        raise NotImplementedError


def _visible(name: str) -> bool:
    # Temp files (".x.tmp-*"), markers of other tools and staging dirs start with '.'
    return not any(part.startswith(".") for part in PurePosixPath(name).parts)


class LocalStore(Store):
    def __init__(self, root: Path) -> None:
        self.root = root

    def list(self, suffix: str = "") -> list[str]:
        if not self.root.is_dir():
            raise UsageError(f"{self.root} is not a directory")
        names = (p.relative_to(self.root).as_posix() for p in self.root.rglob("*") if p.is_file())
        return sorted(n for n in names if n.endswith(suffix) and _visible(n))

    def lines(self, name: str) -> Iterator[bytes]:
        with (self.root / name).open("rb") as handle:
            yield from handle

    def exists(self, name: str) -> bool:
        return (self.root / name).is_file()

    def download(self, name: str, dest: Path) -> None:
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(self.root / _check_name(name), dest)

    def publisher(self, name: str) -> Any:
        return atomic_output(self.root / name, "wb")

    def describe(self, name: str = "") -> str:
        return str(self.root / name) if name else str(self.root)


class S3Store(Store):
    def __init__(self, uri: str) -> None:
        bucket, _, prefix = uri[len("s3://") :].partition("/")
        if not bucket:
            raise UsageError(f"{uri!r} names no bucket; expected s3://BUCKET/PREFIX")
        self.bucket = bucket
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        import boto3  # noqa: PLC0415 (only S3 users pay for the import)

        self.client = boto3.client("s3")

    def _key(self, name: str) -> str:
        return self.prefix + name

    def describe(self, name: str = "") -> str:
        return f"s3://{self.bucket}/{self._key(name)}"

    @contextmanager
    def _errors(self, what: str) -> Iterator[None]:
        """botocore errors as UsageError (4xx: fix the config) or StorageError (retry)."""
        from botocore.exceptions import BotoCoreError, ClientError  # noqa: PLC0415

        try:
            yield
        except (ClientError, BotoCoreError) as exc:
            raise _translate(exc, what) from None

    def list(self, suffix: str = "") -> list[str]:
        names = []
        with self._errors(f"listing {self.describe()}"):
            pages = self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=self.prefix
            )
            for page in pages:
                for item in page.get("Contents", []):
                    name = item["Key"][len(self.prefix) :]
                    if name and not name.endswith("/") and name.endswith(suffix) and _visible(name):
                        names.append(name)
        return sorted(names)

    def lines(self, name: str) -> Iterator[bytes]:
        with self._errors(f"reading {self.describe(name)}"):
            body = self.client.get_object(Bucket=self.bucket, Key=self._key(name))["Body"]
            yield from body.iter_lines(keepends=True)

    def exists(self, name: str) -> bool:
        from botocore.exceptions import ClientError  # noqa: PLC0415

        try:
            self.client.head_object(Bucket=self.bucket, Key=self._key(name))
        except ClientError as exc:
            if exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") == 404:
                return False
            raise _translate(exc, f"checking {self.describe(name)}") from None
        return True

    def download(self, name: str, dest: Path) -> None:
        dest.parent.mkdir(parents=True, exist_ok=True)
        with self._errors(f"downloading {self.describe(name)}"):
            self.client.download_file(self.bucket, self._key(_check_name(name)), str(dest))

    @contextmanager
    def publisher(self, name: str) -> Iterator[IO[bytes]]:
        # Staged on local scratch (/tmp, an emptyDir), then one PutObject: readers
        # never see a partial object. One PUT is limited to 5 GiB per shard.
        with tempfile.TemporaryFile() as handle:
            yield handle
            handle.flush()
            handle.seek(0)
            with self._errors(f"writing {self.describe(name)}"):
                self.client.put_object(Bucket=self.bucket, Key=self._key(name), Body=handle)


def _translate(exc: Exception, what: str) -> Exception:
    from botocore.exceptions import ClientError, NoCredentialsError  # noqa: PLC0415

    if isinstance(exc, NoCredentialsError):
        return UsageError(f"{what}: no AWS credentials (IRSA or AWS_* variables)")
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))
        message = f"{what}: {error.get('Code')}: {error.get('Message')}"
        if 400 <= status < 500 and status not in (408, 429):
            return UsageError(message)
        return StorageError(message)
    return StorageError(f"{what}: {exc}")


def open_store(uri: str) -> Store:
    return S3Store(uri) if is_s3(uri) else LocalStore(Path(uri))
