"""The exception tree: every failure the tool reports is a ConverterError.

    ConverterError                 one-line, user-facing message ("doing X to Y: cause")
    ├── UsageError                 bad flags, references or formats (exit status 2)
    │   ├── InvalidReference
    │   ├── InvalidFormat
    │   └── JobFileError           a mirroring job file is invalid (file, line, field)
    ├── LayerError                 a source layer is malformed (names the layer and the entry)
    ├── ErofsFormatError           an EROFS image is corrupt or uses what we cannot read
    │   └── ErofsUnsupported       valid EROFS that our reader does not decode (a tool can)
    ├── ToolError                  an external program is missing, too old or failed
    │   └── MkfsError              mkfs.erofs failed (exit code and the end of its stderr)
    ├── RegistryError              the registry said no (status, code, method, redacted URL)
    │   ├── AuthError
    │   ├── NotFound
    │   ├── DigestMismatch         downloaded bytes do not match their digest
    │   └── TemporaryRegistryError a failure another attempt may fix (retried)
    ├── UnsupportedMediaType
    ├── ImageError                 a manifest/config/index is malformed or inconsistent
    ├── LayerFailed                a layer's pull, build or push failed (image, layer, stage)
    ├── PushFailed                 pushing an image's manifest, index or config failed
    ├── CacheEntryInvalid          a layer cache entry failed a check (a miss, never shown)
    └── Cancelled                  the CancelScope an operation ran in was cancelled

Only ConverterError and OSError are expected failures: the pipeline wraps them with the
image, layer and stage, and the CLI prints them as one line. Anything else is a bug; it
propagates unchanged and the CLI reports it as an internal error with its traceback.
Third-party exceptions are converted at the boundary with ``raise ... from exc``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from converter.reference import Digest


class ConverterError(Exception):
    """Root of all errors the tool reports to users."""

    exit_status = 1


class UsageError(ConverterError):
    """The caller asked for something malformed; exit status 2 like argparse."""

    exit_status = 2


class InvalidReference(UsageError):
    """An image reference does not parse."""


class InvalidFormat(UsageError):
    """A --to FORMAT string does not parse or names an unknown algorithm/option."""


class LayerError(ConverterError):
    """A source layer is malformed; the message names the layer and, if known, the entry."""

    def __init__(self, message: str, *, layer: str = "", entry: str = "") -> None:
        self.layer = layer
        self.entry = entry
        where = []
        if layer:
            where.append(f"layer {layer}")
        if entry:
            where.append(f"entry {entry!r}")
        prefix = f"reading {', '.join(where)}: " if where else ""
        super().__init__(prefix + message)
        self.detail = message


class ErofsFormatError(ConverterError):
    """An EROFS image is corrupt, truncated or uses a feature we do not read."""


class ErofsUnsupported(ErofsFormatError):
    """A valid EROFS feature our reader does not decode (``convert verify`` then asks fsck.erofs)."""


class ToolError(ConverterError):
    """An external program (mkfs.erofs, ...) is missing, too old, or failed."""


class MkfsError(ToolError):
    """mkfs.erofs exited non-zero or reported an error."""

    def __init__(self, message: str, *, returncode: int | None = None, stderr: str = "") -> None:
        self.returncode = returncode
        self.stderr = stderr
        tail = stderr.strip().splitlines()[-5:]
        detail = f" (exit {returncode})" if returncode is not None else ""
        if tail:
            detail += ": " + " | ".join(tail)
        super().__init__(message + detail)


class RegistryError(ConverterError):
    """A registry answered with an error, or could not be reached."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        code: str = "",
        method: str = "",
        url: str = "",
        temporary: bool = False,
        retry_after: float | None = None,
    ) -> None:
        self.status = status
        self.code = code
        self.method = method
        self.url = url
        self.temporary = temporary
        self.retry_after = retry_after  # seconds the server asked us to wait (Retry-After), if any
        super().__init__(message)


class AuthError(RegistryError):
    """Authentication or authorisation failed (401/403)."""


class NotFound(RegistryError):
    """The registry does not have the manifest, blob or repository."""


class DigestMismatch(RegistryError):
    """Downloaded bytes do not hash to the digest that was asked for.

    Usually the transfer was corrupted on the way (a broken proxy or middlebox), and a fresh
    download fixes it; but only the consumer of the bytes can download again, since it must
    first throw away what it already received. So the registry client raises this
    ``temporary`` with ``attempts``, the number of downloads its retry policy allows in all;
    the consumer downloads again until it has made that many, then raises ``exhausted()``,
    which is permanent and says how many downloads were tried.
    """

    def __init__(self, message: str, *, attempts: int = 1, method: str = "", url: str = "",
                 temporary: bool | None = None) -> None:
        super().__init__(message, method=method, url=url,
                         temporary=attempts > 1 if temporary is None else temporary)
        self.attempts = max(1, attempts)

    def exhausted(self, downloads: int) -> DigestMismatch:
        """The permanent error to report after ``downloads`` downloads all failed like this one."""
        plural = "s" if downloads != 1 else ""
        return DigestMismatch(f"{self} (after {downloads} download{plural})", attempts=self.attempts,
                              method=self.method, url=self.url, temporary=False)


class UnsupportedMediaType(ConverterError):
    """A manifest, config or layer has a media type we cannot convert."""


class ImageError(ConverterError):
    """A manifest, index or config is malformed or inconsistent."""


class JobFileError(UsageError):
    """A job file is invalid: ``file``, ``line`` (1-based, 0 if unknown) and ``field`` say where.

    A usage error (exit status 2): the job file is the command's input, like its flags.
    """

    def __init__(self, message: str, *, file: str, line: int = 0, field: str = "") -> None:
        self.file = file
        self.line = line
        self.field = field
        self.detail = message
        where = f"{file}:{line}" if line else file
        super().__init__(f"{where}: {field}: {message}" if field else f"{where}: {message}")


class TemporaryRegistryError(RegistryError):
    """A transient registry failure (a status another attempt may succeed on, or a dropped
    connection). Callers should catch RegistryError; this subclass only marks it temporary."""

    def __init__(self, message: str, *, status: int | None = None, code: str = "", method: str = "",
                 url: str = "", retry_after: float | None = None) -> None:
        super().__init__(message, status=status, code=code, method=method, url=url, temporary=True,
                         retry_after=retry_after)


class LayerFailed(ConverterError):
    """A layer of an image could not be pulled, converted or pushed; wraps the first failure
    (a ConverterError or OSError) and keeps its exit status."""

    def __init__(self, message: str, *, image: str, layer: Digest | None, stage: str,
                 cause: ConverterError | OSError) -> None:
        super().__init__(message)
        self.image = image
        self.layer = layer
        self.stage = stage
        self.exit_status = cause.exit_status if isinstance(cause, ConverterError) else 1


class PushFailed(ConverterError):
    """Pushing a converted image's manifest, index or config failed; the message names the
    source image, then the sink's error (which names the destination)."""

    def __init__(self, message: str, *, image: str, cause: ConverterError) -> None:
        super().__init__(message)
        self.image = image
        self.exit_status = cause.exit_status


class CacheEntryInvalid(ConverterError):
    """A layer cache entry failed a check; the layer is converted instead (never shown to users
    as a failure)."""


class Cancelled(ConverterError):
    """An operation stopped because the ``CancelScope`` it ran in was cancelled (Ctrl-C, SIGTERM,
    or a failure elsewhere). The one cancellation error: registry calls, mkfs.erofs runs and
    the layer graph's readers all raise it; it is never retried."""
