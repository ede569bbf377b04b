"""Downloads (file:// URLs of archives built in tmp_path; never the network) and safe extraction."""

from __future__ import annotations

import csv
import hashlib
import io
import tarfile
import urllib.error
import zipfile
from pathlib import Path

import numpy as np
import pytest
import soundfile

from add_lightning.data import ESC50, SpeechCommands
from add_lightning.data import download as download_module
from add_lightning.data.download import (
    EXTRACTED_MARKER,
    ChecksumError,
    UnsafeArchiveError,
    download_and_extract,
    download_url,
    extract_archive,
)


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def make_tar(path: Path, files: dict[str, bytes], prefix: str = "") -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(prefix + name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def make_zip(path: Path, files: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as zipped:
        for name, data in files.items():
            zipped.writestr(name, data)
    return path


FILES = {"top/a.txt": b"alpha", "top/sub/b.txt": b"beta" * 1000}


@pytest.mark.parametrize("kind", ["zip", "tar.gz"])
def test_download_and_extract_file_url(tmp_path: Path, kind: str) -> None:
    source = tmp_path / f"archive.{kind}"
    (make_zip if kind == "zip" else make_tar)(source, FILES)
    root = tmp_path / "root"
    folder = download_and_extract(source.as_uri(), root, sha256=sha256_of(source), progress=False)
    assert folder == root / "archive"
    assert (folder / "top" / "a.txt").read_bytes() == b"alpha"
    assert (folder / "top" / "sub" / "b.txt").read_bytes() == b"beta" * 1000
    assert (folder / EXTRACTED_MARKER).is_file()
    assert sorted(p.name for p in root.iterdir()) == ["archive", f"archive.{kind}"]
    # completed: a second call neither downloads nor extracts (the source may be gone)
    source.unlink()
    assert download_and_extract(source.as_uri(), root, progress=False) == folder


def test_md5_is_accepted(tmp_path: Path) -> None:
    source = make_zip(tmp_path / "a.zip", FILES)
    md5 = hashlib.md5(source.read_bytes()).hexdigest()
    path = download_url(source.as_uri(), tmp_path / "out" / "a.zip", md5=md5, progress=False)
    assert path.read_bytes() == source.read_bytes()


def test_checksum_mismatch_removes_the_download(tmp_path: Path) -> None:
    source = make_zip(tmp_path / "a.zip", FILES)
    root = tmp_path / "root"
    with pytest.raises(
        ChecksumError, match=r"Checksum mismatch for .*a\.zip\.part: expected sha256 0+"
    ):
        download_and_extract(source.as_uri(), root, sha256="0" * 64, progress=False)
    assert not root.exists()  # neither the archive nor a .part nor the folder made for them


def test_existing_file_with_wrong_checksum_is_downloaded_again(tmp_path: Path) -> None:
    source = make_zip(tmp_path / "a.zip", FILES)
    target = tmp_path / "out" / "a.zip"
    target.parent.mkdir()
    target.write_bytes(b"corrupt")
    download_url(source.as_uri(), target, sha256=sha256_of(source), progress=False)
    assert target.read_bytes() == source.read_bytes()


def test_stale_part_file_restarts_cleanly(tmp_path: Path) -> None:
    source = make_zip(tmp_path / "a.zip", FILES)
    target = tmp_path / "out" / "a.zip"
    target.parent.mkdir()
    # an interrupted earlier run left garbage: file:// cannot resume, so it starts over
    target.with_name("a.zip.part").write_bytes(b"garbage from an interrupted run")
    download_url(source.as_uri(), target, sha256=sha256_of(source), progress=False)
    assert target.read_bytes() == source.read_bytes()
    assert not target.with_name("a.zip.part").exists()


class _PartialResponse(io.BytesIO):
    """What an HTTP server answers to a range request it honours (206 Partial Content)."""

    def __init__(self, data: bytes, status: int) -> None:
        super().__init__(data)
        self.status = status
        self.headers = {"Content-Length": str(len(data))}


def test_http_download_resumes_from_the_part_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    content = bytes(range(256)) * 100
    target = tmp_path / "data.bin"
    target.with_name("data.bin.part").write_bytes(content[:1000])
    offsets = []

    def fake_open(url: str, offset: int) -> _PartialResponse:
        offsets.append(offset)
        return _PartialResponse(content[offset:], 206)

    monkeypatch.setattr(download_module, "_open_url", fake_open)
    sha256 = hashlib.sha256(content).hexdigest()
    download_url("https://example.invalid/data.bin", target, sha256=sha256, progress=False)
    assert offsets == [1000]
    assert target.read_bytes() == content


def test_complete_part_file_answered_416_is_verified(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    content = b"complete" * 10
    target = tmp_path / "data.bin"
    target.with_name("data.bin.part").write_bytes(content)

    def range_not_satisfiable(url: str, offset: int) -> None:
        raise urllib.error.HTTPError(url, 416, "Range Not Satisfiable", {}, None)  # type: ignore[arg-type]

    monkeypatch.setattr(download_module, "_open_url", range_not_satisfiable)
    sha256 = hashlib.sha256(content).hexdigest()
    download_url("https://example.invalid/data.bin", target, sha256=sha256, progress=False)
    assert target.read_bytes() == content


def test_http_server_ignoring_range_restarts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    content = b"0123456789" * 50
    target = tmp_path / "data.bin"
    target.with_name("data.bin.part").write_bytes(b"XXXX")
    monkeypatch.setattr(
        download_module, "_open_url", lambda url, offset: _PartialResponse(content, 200)
    )
    download_url("http://example.invalid/data.bin", target, progress=False)
    assert target.read_bytes() == content


def test_unsupported_url_scheme(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"`url`.*ftp://host/a\.zip"):
        download_url("ftp://host/a.zip", tmp_path / "a.zip")


def _tar_with_member(path: Path, member: tarfile.TarInfo, data: bytes = b"") -> Path:
    with tarfile.open(path, "w:gz") as tar:
        ok = tarfile.TarInfo("safe/ok.txt")
        ok.size = 2
        tar.addfile(ok, io.BytesIO(b"ok"))
        member.size = len(data) if member.isfile() else 0
        tar.addfile(member, io.BytesIO(data) if member.isfile() else None)
    return path


def _symlink(name: str, target: str, hard: bool = False) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = tarfile.LNKTYPE if hard else tarfile.SYMTYPE
    info.linkname = target
    return info


@pytest.mark.parametrize(
    ("member", "message"),
    [
        (tarfile.TarInfo("/etc/evil.txt"), r"member '/etc/evil\.txt' has an absolute path"),
        (
            tarfile.TarInfo("safe/../../evil.txt"),
            r"member 'safe/\.\./\.\./evil\.txt' contains '\.\.'",
        ),
        (
            _symlink("safe/link", "../../outside"),
            r"member 'safe/link' is a symlink to '\.\./\.\./outside'",
        ),
        (_symlink("safe/abs", "/etc/passwd"), r"member 'safe/abs' is a symlink to '/etc/passwd'"),
        (_symlink("safe/hard", "../x", hard=True), r"member 'safe/hard' is a hardlink to '\.\./x'"),
    ],
    ids=["absolute", "dotdot", "symlink-escape", "symlink-absolute", "hardlink-escape"],
)
def test_unsafe_tar_members_are_refused(
    tmp_path: Path, member: tarfile.TarInfo, message: str
) -> None:
    archive = _tar_with_member(tmp_path / "evil.tar.gz", member, b"pwned")
    destination = tmp_path / "out" / "evil"
    with pytest.raises(UnsafeArchiveError, match=message):
        extract_archive(archive, destination)
    assert not destination.exists()
    assert list((tmp_path / "out").iterdir()) == []  # no temporary folder left behind
    assert not (tmp_path / "etc").exists() and not (tmp_path / "evil.txt").exists()


def test_symlink_inside_the_archive_is_allowed(tmp_path: Path) -> None:
    archive = _tar_with_member(tmp_path / "a.tar.gz", _symlink("safe/link", "ok.txt"))
    destination = extract_archive(archive, tmp_path / "out")
    assert (destination / "safe" / "link").resolve() == (destination / "safe" / "ok.txt").resolve()


@pytest.mark.parametrize(
    ("name", "message"),
    [("../evil.txt", r"member '\.\./evil\.txt' contains '\.\.'"), ("/abs.txt", "absolute path")],
    ids=["dotdot", "absolute"],
)
def test_unsafe_zip_members_are_refused(tmp_path: Path, name: str, message: str) -> None:
    archive = tmp_path / "evil.zip"
    with zipfile.ZipFile(archive, "w") as zipped:
        zipped.writestr("fine.txt", b"fine")
        zipped.writestr(zipfile.ZipInfo(name), b"pwned")
    with pytest.raises(UnsafeArchiveError, match=message):
        extract_archive(archive, tmp_path / "out" / "evil")
    assert list((tmp_path / "out").iterdir()) == []


def test_zip_symlink_escaping_is_refused(tmp_path: Path) -> None:
    archive = tmp_path / "evil.zip"
    with zipfile.ZipFile(archive, "w") as zipped:
        info = zipfile.ZipInfo("dir/link")
        info.external_attr = 0o120777 << 16  # S_IFLNK
        zipped.writestr(info, "../../secret")
    with pytest.raises(UnsafeArchiveError, match=r"'dir/link' is a symlink to '\.\./\.\./secret'"):
        extract_archive(archive, tmp_path / "out")


def test_not_an_archive(tmp_path: Path) -> None:
    path = tmp_path / "plain.zip"
    path.write_bytes(b"not an archive")
    with pytest.raises(ValueError, match=r"plain\.zip to be a zip or tar archive"):
        extract_archive(path, tmp_path / "out")


def test_existing_folder_without_marker_is_not_overwritten(tmp_path: Path) -> None:
    archive = make_zip(tmp_path / "a.zip", FILES)
    (tmp_path / "out").mkdir()
    with pytest.raises(FileExistsError, match=r"no \.add_lightning_extracted marker"):
        extract_archive(archive, tmp_path / "out")


def test_strip_components_and_dot_prefixes(tmp_path: Path) -> None:
    archive = make_tar(tmp_path / "a.tar.gz", FILES, prefix="./")
    destination = extract_archive(archive, tmp_path / "out", strip_components=1)
    assert (destination / "a.txt").read_bytes() == b"alpha"
    assert (destination / "sub" / "b.txt").is_file()


# the datasets' download=True path, with file:// archives laid out like the real ones


def _wav_bytes(seconds: float = 0.1) -> bytes:
    buffer = io.BytesIO()
    samples = np.zeros(round(seconds * 16000), dtype=np.float32)
    samples[::50] = 0.1  # not silent
    soundfile.write(buffer, samples, 16000, format="WAV")
    return buffer.getvalue()


def test_esc50_download_from_github_like_zip(tmp_path: Path) -> None:
    rows = io.StringIO()
    writer = csv.writer(rows)
    writer.writerow(["filename", "fold", "target", "category", "esc10", "src_file", "take"])
    files = {}
    for fold in range(1, 6):
        for target, category in ((0, "dog"), (1, "rooster")):
            name = f"{fold}-{100 + fold}-A-{target}.wav"
            files[f"ESC-50-master/audio/{name}"] = _wav_bytes()
            writer.writerow([name, fold, target, category, "True", 100 + fold, "A"])
    files["ESC-50-master/meta/esc50.csv"] = rows.getvalue().encode()
    files["ESC-50-master/README.md"] = b"readme"
    archive = make_zip(tmp_path / "master.zip", files)
    index = ESC50(
        str(tmp_path / "data"), download=True, url=archive.as_uri(), sha256=sha256_of(archive)
    )
    index.prepare()
    assert (tmp_path / "data" / "ESC-50-master" / "meta" / "esc50.csv").is_file()
    assert index.class_names == ["dog", "rooster"]
    assert len(index.clips("test", 4)) == 2


def test_speech_commands_download_from_flat_tar(tmp_path: Path) -> None:
    files = {
        "./yes/0a0b0c0d_nohash_0.wav": _wav_bytes(),
        "./yes/0a0b0c0e_nohash_0.wav": _wav_bytes(),
        "./no/0a0b0c0d_nohash_0.wav": _wav_bytes(),
        "./_background_noise_/noise.wav": _wav_bytes(),
        "./validation_list.txt": b"yes/0a0b0c0e_nohash_0.wav\n",
        "./testing_list.txt": b"no/0a0b0c0d_nohash_0.wav\n",
    }
    archive = make_tar(tmp_path / "speech_commands_v0.02.tar.gz", files)
    index = SpeechCommands(str(tmp_path / "data"), download=True, url=archive.as_uri(), sha256=None)
    index.prepare()
    assert index.class_names == ["no", "yes"]
    assert [c.clip_id for c in index.clips("validation")] == ["yes/0a0b0c0e_nohash_0"]
    assert [c.clip_id for c in index.clips("test")] == ["no/0a0b0c0d_nohash_0"]


def test_dataset_download_checksum_mismatch(tmp_path: Path) -> None:
    archive = make_tar(tmp_path / "sc.tar.gz", {"./testing_list.txt": b""})
    index = SpeechCommands(str(tmp_path / "data"), download=True, url=archive.as_uri())
    with pytest.raises(ChecksumError, match="expected sha256 af14739e"):
        index.prepare()  # the default checksum is that of the real V2 archive
    assert not (tmp_path / "data").exists()


def test_offline_download_says_what_to_do(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def offline(url: str, offset: int):
        raise urllib.error.URLError(OSError(-3, "Temporary failure in name resolution"))

    monkeypatch.setattr(download_module, "_open_url", offline)
    url = "https://example.org/data/archive.zip"
    with pytest.raises(download_module.DownloadError) as info:
        download_and_extract(url, tmp_path, progress=False)
    message = str(info.value)
    assert url in message and "name resolution" in message
    assert str(tmp_path / "archive.zip") in message and "`download: false`" in message


@pytest.mark.parametrize("kind", ["zip", "tar.gz"])
def test_truncated_unverified_archive_is_removed(tmp_path: Path, kind: str) -> None:
    source = tmp_path / "src"
    source.mkdir()
    data = np.random.default_rng(0).bytes(200_000)  # incompressible: truncation hits the data
    make = make_zip if kind == "zip" else make_tar
    archive = make(source / f"data.{kind}", {"top/a.bin": data})
    archive.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    root = tmp_path / "root"
    with pytest.raises(ValueError, match=r"cannot be extracted .*has been removed"):
        download_and_extract(archive.as_uri(), root, progress=False)
    assert not (root / f"data.{kind}").exists()  # the next run downloads it again
    assert not (root / "data").exists()
