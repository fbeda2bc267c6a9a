"""``docker-daemon:REF``: an image in the local Docker engine, as a source.

Talks to Docker through python-on-whales (which runs the ``docker`` CLI, so ``DOCKER_HOST``,
contexts and the CLI's configuration apply as they do for ``docker`` itself). The engine has no
API for reading single blobs, so the image is streamed once out of ``docker save`` into one
private file, and that file is read in place as a ``docker-archive`` (member offsets, several
layers at once; ``converter.transports.archive``) — one copy on disk, never unpacked. The file
is removed by ``close()`` (or when the source is garbage-collected).
"""

from __future__ import annotations

import shutil
import tempfile
import weakref
from pathlib import Path

from converter.errors import ConverterError, ImageError
from converter.reference import ArchiveKind, ArchiveRef, DaemonRef
from converter.transports.archive import DockerArchiveSource


class DockerDaemonSource(DockerArchiveSource):
    """Reads ``ref`` from the Docker engine (see the module docstring)."""

    def __init__(self, ref: DaemonRef, *, host: str | None = None, workdir: Path | None = None) -> None:
        from python_on_whales import DockerClient
        from python_on_whales.exceptions import DockerException

        self.daemon_ref = ref
        tmp = Path(tempfile.mkdtemp(prefix="erofs-convert-daemon-", dir=workdir))
        self._finalizer = weakref.finalize(self, shutil.rmtree, tmp, True)
        archive = tmp / "image.tar"
        what = f"reading {ref} from the Docker engine"
        try:
            docker = DockerClient(host=host)
            stream = docker.image.save(ref.name)
            assert stream is not None  # no output file given: save streams
            with open(archive, "wb") as out:
                for chunk in stream:
                    out.write(chunk)
        except DockerException as exc:
            self.close()
            detail = (exc.stderr or str(exc)).strip().splitlines()
            raise ImageError(f"{what}: {detail[-1] if detail else exc}") from None
        except OSError as exc:
            self.close()
            raise ConverterError(f"{what}: {exc.strerror or exc}") from exc
        except BaseException:
            self.close()
            raise
        # One image was saved, so the archive's only entry is it (whether named by tag or ID).
        super().__init__(ArchiveRef(ArchiveKind.DOCKER, archive, None))

    @property
    def name(self) -> str:
        return str(self.daemon_ref)

    def close(self) -> None:
        self._finalizer()


__all__ = ["DockerDaemonSource"]
