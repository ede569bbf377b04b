"""Downloading and safely extracting dataset archives.

Downloads go to ``<file>.part`` and are renamed once complete and verified; an interrupted
download resumes with an HTTP range request when the server supports it and restarts cleanly
otherwise. Archives are extracted into a temporary folder next to the destination, which is
renamed into place only after every member was checked and written, together with a marker
file (``EXTRACTED_MARKER``) recording the completed extraction.
"""

from __future__ import annotations

import copy
import hashlib
import logging
import os
import shutil
import stat
import tarfile
import urllib.error
import urllib.parse
import urllib.request
import zipfile
import zlib
from collections.abc import Iterator
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
    """POSIX-absolute or a Windows drive path (``C:...``); ``name`` uses forward slashes."""
    return name.startswith("/") or (len(name) > 1 and name[0].isalpha() and name[1] == ":")


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


def _link_stays_inside(member_parts: tuple[str, ...], link: str, relative_to_member: bool) -> bool:
    """Whether a link target, resolved without touching the disk, stays in the archive root."""
    normalised = link.replace("\\", "/")
    if _is_absolute(normalised):
        return False
    stack = list(member_parts[:-1]) if relative_to_member else []
    for part in PurePosixPath(normalised).parts:
        if part in ("", "."):
            continue
        if part == "..":
            if not stack:
                return False
            stack.pop()
        else:
            stack.append(part)
    return True


def _checked_tar_members(
    tar: tarfile.TarFile, archive: Path, strip_components: int
) -> Iterator[tarfile.TarInfo]:
    for member in tar.getmembers():
        parts = _member_parts(member.name, archive)
        if member.issym() or member.islnk():
            # symlink targets are relative to the link's folder, hardlink targets to the root
            if not _link_stays_inside(parts, member.linkname, relative_to_member=member.issym()):
                kind = "symlink" if member.issym() else "hardlink"
                raise UnsafeArchiveError(
                    f"Refusing to extract {archive}: member {member.name!r} is a {kind} to "
                    f"{member.linkname!r}, outside the target folder."
                )
        elif not (member.isfile() or member.isdir()):
            log.warning("Skipping %s member %r (not a file, folder or link)", archive, member.name)
            continue
        if len(parts) <= strip_components:
            continue
        member = copy.copy(member)
        member.name = "/".join(parts[strip_components:])
        if member.islnk():
            member.linkname = "/".join(_member_parts(member.linkname, archive)[strip_components:])
        yield member


def _extract_zip(archive: Path, target: Path, strip_components: int) -> None:
    with zipfile.ZipFile(archive) as zipped:
        infos = zipped.infolist()
        for info in infos:  # check everything before writing anything
            parts = _member_parts(info.filename, archive)
            if stat.S_ISLNK(info.external_attr >> 16):
                link = zipped.read(info).decode("utf-8", errors="replace")
                if not _link_stays_inside(parts, link, relative_to_member=True):
                    raise UnsafeArchiveError(
                        f"Refusing to extract {archive}: member {info.filename!r} is a symlink "
                        f"to {link!r}, outside the target folder."
                    )
        for info in infos:
            parts = _member_parts(info.filename, archive)[strip_components:]
            if not parts:
                continue
            destination = target.joinpath(*parts)
            if info.is_dir():
                destination.mkdir(parents=True, exist_ok=True)
                continue
            destination.parent.mkdir(parents=True, exist_ok=True)
            # zip symlinks are written as small files holding the link text, never followed
            with zipped.open(info) as source, open(destination, "wb") as stream:
                shutil.copyfileobj(source, stream, _CHUNK_BYTES)


def _extract_tar(archive: Path, target: Path, strip_components: int) -> None:
    with tarfile.open(archive) as tar:
        members = list(_checked_tar_members(tar, archive, strip_components))
        if hasattr(tarfile, "data_filter"):  # Python >= 3.11.4: a second, independent check
            tar.extractall(target, members=members, filter="data")
        else:  # pragma: no cover - older Pythons; every member was checked above
            tar.extractall(target, members=members)


def extract_archive(
    archive: str | os.PathLike[str], destination: str | os.PathLike[str], strip_components: int = 0
) -> Path:
    """Safely extracts a zip or tar(.gz/.bz2/.xz) archive into ``destination``.

    Members with absolute paths or ``..`` components, and symlinks or hardlinks pointing outside
    the archive, are refused with ``UnsafeArchiveError`` naming the member, before anything is
    written. The archive is unpacked into a temporary sibling folder which is renamed to
    ``destination`` at the end, with the marker file ``EXTRACTED_MARKER`` inside; an existing
    ``destination`` holding the marker is kept as it is.

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
    archive = download_url(url, root / name, sha256=sha256, md5=md5, progress=progress)
    try:
        return extract_archive(archive, destination, strip_components=strip_components)
    except UnsafeArchiveError:
        raise
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
