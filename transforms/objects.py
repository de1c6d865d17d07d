"""The object store the domain's ledger, journal and secret files use for URLs: Beam's FileSystems.

Beam is loaded when a URL is first reached, so local runs never pay for it.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class BeamObjects:
    """closecrm.storage.ObjectStore over ``apache_beam.io.filesystems.FileSystems`` (gs://, s3://, …)."""

    def list(self, pattern: str) -> list[str]:
        from apache_beam.io.filesystems import FileSystems

        return sorted(m.path for r in FileSystems.match([pattern]) for m in r.metadata_list)

    def read(self, url: str) -> bytes:
        from apache_beam.io.filesystems import FileSystems

        with FileSystems.open(url) as fh:
            return fh.read()

    def write(self, url: str, data: bytes) -> None:
        from apache_beam.io.filesystems import FileSystems

        with FileSystems.create(url) as fh:
            fh.write(data)

    def delete(self, url: str) -> None:
        from apache_beam.io.filesystems import FileSystems

        FileSystems.delete([url])


BEAM_OBJECTS = BeamObjects()
