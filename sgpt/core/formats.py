"""Format versions: every description sgpt writes says which format, and which version of it.

A reader checks a file with its format's ``check`` before it trusts anything else in it: a
file of the format at a version this sgpt reads loads; a newer one is refused, naming the
file, its version and the newest this sgpt reads ("upgrade sgpt"); an older one that this
sgpt no longer reads is refused with what makes it again. A writer puts ``stamp()`` first.

Every format began at version 1: a file of a format that names no version is version 1.
The k-means sidecar and the vocoder's config.json were written without a ``"format"`` key
before versions existed (and the published vocoders have none): for their formats
(``unnamed``), a file without one is version 1 too, and any ``"version"`` key it has is
not ours.
"""

from __future__ import annotations

from dataclasses import dataclass

from sgpt.core.errors import CheckpointError, SgptError


@dataclass(frozen=True)
class FileFormat:
    """One kind of file sgpt writes: its ``"format"`` value and the versions it reads."""

    name: str        # the "format" value: "sgpt-model"
    what: str        # what such a file is, for errors: "an sgpt model description"
    remake: str      # what to do with one too old to read: "train it again with sgpt-train"
    version: int = 1  # the version this sgpt writes, the newest it reads
    oldest: int = 1   # the oldest version it reads
    unnamed: bool = False  # a file without "format" is of this one (version 1)
    error: type[SgptError] = CheckpointError

    def stamp(self) -> dict:
        """The keys that open a file of this format as this sgpt writes it."""
        return {"format": self.name, "version": self.version}

    def check(self, where: object, meta: object) -> None:
        """``error`` in one line naming ``where`` (the file ``meta`` was read from) unless
        ``meta`` is a JSON object of this format at a version this sgpt reads."""
        named = isinstance(meta, dict) and "format" in meta
        if not isinstance(meta, dict) or (named or not self.unnamed) and (
                meta.get("format") != self.name):
            raise self.error(f"{where}: not {self.what} (format {self.name!r})")
        version = meta.get("version", 1) if named else 1
        if not isinstance(version, int) or isinstance(version, bool):
            raise self.error(f"{where}: version {version!r} is not a format version")
        if version > self.version:
            raise self.error(f"{where}: {self.name} version {version} is newer than this sgpt "
                             f"reads ({self.version}): upgrade sgpt")
        if version < self.oldest:
            reads = (str(self.version) if self.oldest == self.version
                     else f"{self.oldest} to {self.version}")
            raise self.error(f"{where}: {self.name} version {version} is older than this sgpt "
                             f"reads ({reads}): {self.remake}")
