"""Downloading and safely extracting dataset archives.

Downloads go to ``<file>.part`` and are renamed once complete and verified; an interrupted
download resumes with an HTTP range request when the server supports it and restarts cleanly
otherwise. Archives are extracted into a temporary folder next to the destination, which is
renamed into place only after every member was checked and written, together with a marker
file (``EXTRACTED_MARKER``) recording the completed extraction.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import hashlib
import logging
import os
import shutil
import stat
import tarfile
import unicodedata
import urllib.error
import urllib.parse
import urllib.request
import zipfile
import zlib
from collections.abc import Sequence
from pathlib import Path, PurePosixPath

from tqdm.auto import tqdm

from add_lightning.atomic import atomic_directory

log = logging.getLogger(__name__)

EXTRACTED_MARKER = ".add_lightning_extracted"
_CHUNK_BYTES = 1 << 20


class ChecksumError(ValueError):
    """A downloaded file does not have the expected checksum."""


class UnsafeArchiveError(ValueError):
    """An archive member would be written outside the extraction folder."""


class DownloadError(OSError):
    """A download failed (no network, refused, timed out); the message says what to do."""


def file_checksum(path: str | os.PathLike[str], algorithm: str = "sha256") -> str:
    """The hex digest of a file (``algorithm`` is any ``hashlib`` name, e.g. sha256 or md5)."""
    digest = hashlib.new(algorithm)
    with open(path, "rb") as stream:
        for chunk in iter(lambda: stream.read(_CHUNK_BYTES), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _expected_checksum(sha256: str | None, md5: str | None) -> tuple[str, str] | None:
    if sha256 and md5:
        raise ValueError("Expected at most one of the arguments `sha256` and `md5` but got both.")
    if sha256:
        return "sha256", sha256.strip().lower()
    if md5:
        return "md5", md5.strip().lower()
    return None


def verify_checksum(
    path: str | os.PathLike[str], sha256: str | None = None, md5: str | None = None
) -> None:
    """Raises ``ChecksumError`` unless the file has the given checksum (no-op when none given)."""
    expected = _expected_checksum(sha256, md5)
    if expected is None:
        return
    algorithm, value = expected
    actual = file_checksum(path, algorithm)
    if actual != value:
        raise ChecksumError(
            f"Checksum mismatch for {path}: expected {algorithm} {value} but got {actual}."
        )


def _open_url(url: str, offset: int):  # urllib's response type is private
    headers = {"User-Agent": "add-lightning"}
    if offset > 0:
        headers["Range"] = f"bytes={offset}-"
    return urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=60)


def _fetch(url: str, partial: Path, offset: int, name: str, progress: bool) -> None:
    """Appends the bytes from ``offset`` on to ``partial`` (or rewrites it if not resumable)."""
    with _open_url(url, offset) as response:
        resumed = offset > 0 and getattr(response, "status", None) == 206
        if offset > 0:
            log.info("%s %s", f"Resuming from byte {offset}:" if resumed else "Restarting", partial)
        start = offset if resumed else 0
        length = response.headers.get("Content-Length")
        total = start + int(length) if length is not None and length.isdigit() else None
        with (
            open(partial, "ab" if resumed else "wb") as stream,
            tqdm(
                total=total,
                initial=start,
                unit="B",
                unit_scale=True,
                desc=name,
                disable=not progress,
            ) as bar,
        ):
            for chunk in iter(lambda: response.read(_CHUNK_BYTES), b""):
                stream.write(chunk)
                bar.update(len(chunk))


def _download_advice(url: str, path: Path, error: BaseException) -> str:
    reason = getattr(error, "reason", None) or error
    return (
        f"Could not download {url} ({reason}). Without network access, fetch the file by hand "
        f"and put it at {path} (it is then used as it is), or extract the dataset yourself and "
        "set `download: false`."
    )


def download_url(
    url: str,
    path: str | os.PathLike[str],
    sha256: str | None = None,
    md5: str | None = None,
    progress: bool = True,
) -> Path:
    """Downloads ``url`` (http, https or file) to ``path`` and verifies its checksum.

    An existing ``path`` with the right checksum is kept. The bytes go to ``path + ".part"``; a
    ``.part`` left by an interrupted run is resumed when the server answers a range request with
    206 Partial Content, and overwritten otherwise. On a checksum mismatch the downloaded file is
    removed and ``ChecksumError`` raised.

    Args:
        url: The address; ``file://`` URLs are read like remote ones.
        path: Where the file goes.
        sha256: Expected SHA-256 hex digest, or ``None``.
        md5: Expected MD5 hex digest, or ``None`` (at most one of sha256/md5).
        progress: Show a tqdm progress bar.

    Returns:
        ``path``.
    """
    scheme = urllib.parse.urlparse(url).scheme
    if scheme not in ("http", "https", "file"):
        raise ValueError(
            f"Expected argument `url` to be an http, https or file URL but got {url!r}."
        )
    _expected_checksum(sha256, md5)
    path = Path(path)
    if path.exists():
        try:
            verify_checksum(path, sha256, md5)
        except ChecksumError as err:
            log.warning("%s; downloading it again.", err)
            path.unlink()
        else:
            log.info("Using the existing download %s", path)
            return path
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".part")
    offset = partial.stat().st_size if partial.exists() and scheme != "file" else 0
    try:
        _fetch(url, partial, offset, path.name, progress)
    except urllib.error.HTTPError as err:
        if not (err.code == 416 and offset > 0):  # 416: the .part already holds every byte
            raise DownloadError(_download_advice(url, path, err)) from err
    except OSError as err:  # URLError (no network, DNS, refused), timeouts, reset connections
        raise DownloadError(_download_advice(url, path, err)) from err
    try:
        verify_checksum(partial, sha256, md5)
    except ChecksumError as err:
        partial.unlink()
        raise ChecksumError(f"{err} Downloaded from {url}; the file was removed.") from None
    os.replace(partial, path)
    if _expected_checksum(sha256, md5) is None:
        log.warning("Downloaded %s without a checksum to verify it against.", path)
    return path


def _is_absolute(name: str) -> bool:
    """POSIX-absolute, or a Windows drive (``C:...``) or root (``\\...``) path."""
    return name.startswith(("/", "\\")) or (len(name) > 1 and name[0].isalpha() and name[1] == ":")


def _member_parts(name: str, archive: Path) -> tuple[str, ...]:
    """The path components of an archive member, refusing absolute names and ``..``."""
    normalised = name.replace("\\", "/")
    if _is_absolute(normalised):
        raise UnsafeArchiveError(
            f"Refusing to extract {archive}: member {name!r} has an absolute path."
        )
    parts = tuple(part for part in PurePosixPath(normalised).parts if part not in ("", "."))
    if ".." in parts:
        raise UnsafeArchiveError(
            f"Refusing to extract {archive}: member {name!r} contains '..' and would be "
            "written outside the target folder."
        )
    return parts


_MAX_SYMLINK_FOLLOWS = 40  # as Linux (ELOOP): a longer chain is a loop


def _components(path: str) -> list[str]:
    return [part for part in PurePosixPath(path.replace("\\", "/")).parts if part not in ("", ".")]


def _key(parts: Sequence[str]) -> tuple[str, ...]:
    # Case- and normalisation-blind, as the file systems of macOS and Windows: names that such
    # a system takes for one path are one path here.
    return tuple(unicodedata.normalize("NFC", part).casefold() for part in parts)


@dataclasses.dataclass(frozen=True)
class _Entry:
    """An archive member as extraction writes it."""

    name: str  # as stored in the archive, for messages
    parts: tuple[str, ...]  # where it is written in the target folder (after strip_components)
    symlink: str | None = None  # the target of a symlink, relative to its folder
    hardlink: tuple[str, ...] | None = None  # the path a hardlink names, in the target folder


def _check_layout(entries: Sequence[_Entry], archive: Path) -> None:
    """Refuses an archive whose extraction would write or point outside the target folder.

    The extraction is simulated on the names alone, with every symlink of the archive in place
    (whichever order they come in): no member may be written at or under a symlink's path
    (such writes follow the link: the chain ``a -> .``, ``a/a2 -> .``, ``a/a2/b -> ../../x``
    escapes although each link looks harmless on its own), and every link, followed through
    the archive's other symlinks, must end inside the folder.

    Raises:
        UnsafeArchiveError: Naming the first offending member and its link.
    """
    symlinks = {_key(entry.parts): entry for entry in entries if entry.symlink is not None}

    def fault(folder: Sequence[str], link: str) -> str | None:
        """Why ``link``, read in ``folder`` and followed to its end, is unsafe; None if not."""
        outside = "leads outside the target folder"
        if _is_absolute(link):
            return outside
        stack, pending, follows = list(folder), _components(link), 0
        while pending:
            part = pending.pop(0)
            if part == "..":
                if not stack:
                    return outside
                stack.pop()
                continue
            stack.append(part)
            through = symlinks.get(_key(stack))
            if through is not None:
                follows += 1
                if follows > _MAX_SYMLINK_FOLLOWS:
                    return "ends in a loop of symlinks"
                if _is_absolute(through.symlink):
                    return outside
                stack.pop()
                pending = _components(through.symlink) + pending
        return None

    for entry in entries:
        key = _key(entry.parts)
        # its folders, and its own path unless it is that symlink (tarfile replaces a link)
        folders = range(1, len(key) + (entry.symlink is None))
        through = next((symlinks[key[:end]] for end in folders if key[:end] in symlinks), None)
        if through is not None:
            reason = (
                f"would be written through the symlink {through.name!r} (a link to "
                f"{through.symlink!r})"
            )
        elif entry.symlink is not None and (why := fault(entry.parts[:-1], entry.symlink)):
            reason = f"is a symlink to {entry.symlink!r}, which {why}"
        elif entry.hardlink is not None and (why := fault((), "/".join(entry.hardlink))):
            reason = f"is a hardlink to {'/'.join(entry.hardlink)!r}, which {why}"
        else:
            continue
        raise UnsafeArchiveError(f"Refusing to extract {archive}: member {entry.name!r} {reason}.")


def _checked_tar_members(
    tar: tarfile.TarFile, archive: Path, strip_components: int
) -> list[tarfile.TarInfo]:
    """The members to extract, renamed as written; refuses the archive if one is unsafe."""
    members, entries = [], []
    for member in tar.getmembers():
        parts = _member_parts(member.name, archive)
        if not (member.isfile() or member.isdir() or member.issym() or member.islnk()):
            log.warning("Skipping %s member %r (not a file, folder or link)", archive, member.name)
            continue
        hardlink = None
        if member.islnk():  # a path in the archive, stripped as the member names are
            target = _components(member.linkname)
            if _is_absolute(member.linkname) or ".." in target or len(target) <= strip_components:
                raise UnsafeArchiveError(
                    f"Refusing to extract {archive}: member {member.name!r} is a hardlink to "
                    f"{member.linkname!r}, outside the target folder."
                )
            hardlink = tuple(target[strip_components:])
        parts = parts[strip_components:]
        if not parts:
            continue
        symlink = member.linkname if member.issym() else None
        entries.append(_Entry(member.name, parts, symlink=symlink, hardlink=hardlink))
        member = copy.copy(member)
        member.name = "/".join(parts)
        if hardlink is not None:
            member.linkname = "/".join(hardlink)
        member.mode &= 0o755  # no setuid, setgid, sticky or group/other write bits
        members.append(member)
    _check_layout(entries, archive)
    return members


def _extract_zip(archive: Path, target: Path, strip_components: int) -> None:
    with zipfile.ZipFile(archive) as zipped:
        infos, entries = [], []
        for info in zipped.infolist():  # check everything before writing anything
            parts = _member_parts(info.filename, archive)[strip_components:]
            if not parts:
                continue
            symlink = None
            if stat.S_ISLNK(info.external_attr >> 16):
                symlink = zipped.read(info).decode("utf-8", errors="replace")
            entries.append(_Entry(info.filename, parts, symlink=symlink))
            infos.append((info, parts))
        # Zip symlinks are written as small files holding the link text, never followed; they
        # are checked all the same, so that a zip is refused for what a tar is refused for.
        _check_layout(entries, archive)
        for info, parts in infos:
            destination = target.joinpath(*parts)
            if info.is_dir():
                destination.mkdir(parents=True, exist_ok=True)
                continue
            destination.parent.mkdir(parents=True, exist_ok=True)
            with zipped.open(info) as source, open(destination, "wb") as stream:
                shutil.copyfileobj(source, stream, _CHUNK_BYTES)


def _extract_tar(archive: Path, target: Path, strip_components: int) -> None:
    with tarfile.open(archive) as tar:
        members = _checked_tar_members(tar, archive, strip_components)
        if not hasattr(tarfile, "data_filter"):  # Python < 3.11.4: the check above alone
            tar.extractall(target, members=members)
            return
        try:  # a second, independent check
            tar.extractall(target, members=members, filter="data")
        except tarfile.FilterError as error:
            raise UnsafeArchiveError(
                f"Refusing to extract {archive}: Python's tar filter refused it ({error})."
            ) from None


def extract_archive(
    archive: str | os.PathLike[str], destination: str | os.PathLike[str], strip_components: int = 0
) -> Path:
    """Safely extracts a zip or tar(.gz/.bz2/.xz) archive into ``destination``.

    Members with absolute paths or ``..`` components, members written through a symlink of the
    archive, and symlinks or hardlinks that lead outside the folder (followed through the
    archive's other symlinks) are refused with ``UnsafeArchiveError`` naming the member and the
    link, before anything is written. This check does not rely on Python's tar ``data`` filter
    (missing before 3.10.12 and 3.11.4), which runs as a second check where present.

    The archive is unpacked into a temporary sibling folder which is renamed to ``destination``
    at the end, with the marker file ``EXTRACTED_MARKER`` inside; an existing ``destination``
    holding the marker is kept as it is.

    Args:
        archive: The archive file.
        destination: The folder to create.
        strip_components: Leading path components dropped from member names (as ``tar
            --strip-components``), e.g. 1 to unpack ``ESC-50-master/...`` directly.

    Returns:
        ``destination``.
    """
    archive, destination = Path(archive), Path(destination)
    if (destination / EXTRACTED_MARKER).exists():
        log.info("%s is already extracted in %s", archive.name, destination)
        return destination
    if destination.exists():
        raise FileExistsError(
            f"Cannot extract {archive} into {destination}: the folder exists but has no "
            f"{EXTRACTED_MARKER} marker of a completed extraction; remove it and retry."
        )
    if zipfile.is_zipfile(archive):
        extract = _extract_zip
    elif tarfile.is_tarfile(archive):
        extract = _extract_tar
    else:
        raise ValueError(f"Expected {archive} to be a zip or tar archive but it is neither.")
    log.info("Extracting %s into %s", archive, destination)
    with atomic_directory(destination) as temporary:
        extract(archive, temporary, strip_components)
        (temporary / EXTRACTED_MARKER).write_text(f"{archive.name}\n")
    return destination


def _missing_folders(folder: Path) -> list[Path]:
    """``folder`` and its ancestors that do not exist yet, deepest first."""
    missing = []
    while not folder.exists() and folder != folder.parent:
        missing.append(folder)
        folder = folder.parent
    return missing


def download_and_extract(
    url: str,
    root: str | os.PathLike[str],
    sha256: str | None = None,
    md5: str | None = None,
    filename: str | None = None,
    destination: str | os.PathLike[str] | None = None,
    strip_components: int = 0,
    progress: bool = True,
) -> Path:
    """Downloads an archive into ``root``, verifies it and extracts it safely.

    Args:
        url: http(s) or file URL of a zip or tar(.gz) archive.
        root: Folder receiving the archive.
        sha256: Expected SHA-256 of the archive, or ``None`` (unverified).
        md5: Expected MD5 of the archive, or ``None`` (at most one of sha256/md5).
        filename: Name of the archive file in ``root``; default: the URL's last path component.
        destination: Extraction folder; default: ``root / <filename without archive suffix>``.
        strip_components: Leading member path components to drop (see ``extract_archive``).
        progress: Show a tqdm progress bar.

    Returns:
        The extraction folder.
    """
    root = Path(root).expanduser()
    name = filename or PurePosixPath(urllib.parse.urlparse(url).path).name
    if not name:
        raise ValueError(f"Cannot derive an archive file name from `url` {url!r}; pass `filename`.")
    if destination is None:
        stem = name
        for suffix in (".tar.gz", ".tgz", ".tar.bz2", ".tar.xz", ".tar", ".zip"):
            if stem.endswith(suffix):
                stem = stem[: -len(suffix)]
                break
        destination = root / stem
    destination = Path(destination)
    if (destination / EXTRACTED_MARKER).exists():
        return destination
    created = _missing_folders(root)
    try:
        archive = download_url(url, root / name, sha256=sha256, md5=md5, progress=progress)
    except BaseException:
        # A mistyped root must not stay behind as an empty folder; a folder holding a partial
        # download (resumed by the next run) is kept.
        for folder in created:
            with contextlib.suppress(OSError):
                folder.rmdir()  # only if empty
        raise
    try:
        return extract_archive(archive, destination, strip_components=strip_components)
    except UnsafeArchiveError as err:
        raise UnsafeArchiveError(
            f"{err} It was downloaded from {url}; nothing was extracted."
        ) from None
    except (ValueError, EOFError, zipfile.BadZipFile, tarfile.TarError, zlib.error) as err:
        if _expected_checksum(sha256, md5) is not None:
            raise  # a verified archive is what its publisher made: keep it
        # An unverified archive that cannot be read is most likely truncated: remove it, so that
        # the next run downloads it again instead of failing on it forever.
        archive.unlink(missing_ok=True)
        raise ValueError(
            f"The archive {archive} downloaded from {url} cannot be extracted ({err}); it was "
            "probably cut short and has been removed. Run again to download it again."
        ) from err


__all__ = [
    "EXTRACTED_MARKER",
    "ChecksumError",
    "DownloadError",
    "UnsafeArchiveError",
    "download_and_extract",
    "download_url",
    "extract_archive",
    "file_checksum",
    "verify_checksum",
]
