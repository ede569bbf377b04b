"""A full disk, left-over temporary files and malicious archives (issue 24, items 3 and 6).

Archives are built in tmp_path and read through file:// URLs (never the network). The full-disk
tests mount a small tmpfs (root only; skipped elsewhere) as the cache folder, and run what may
crash (a memory map written past a full disk is SIGBUS) in a child process.
"""

from __future__ import annotations

import io
import os
import re
import shutil
import subprocess
import sys
import tarfile
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml
from console_runs import console_env
from tiny_runs import synthetic_dataset, tiny_run_config

from add_lightning.atomic import atomic_path
from add_lightning.data.download import UnsafeArchiveError, download_and_extract, extract_archive

# archives


def _link(name: str, target: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = tarfile.SYMTYPE
    info.linkname = target
    return info


def _file(name: str, data: bytes = b"pwned") -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    return info, data


# Each link alone stays inside; together `a/a2/b` is `b` in the root, pointing two folders up.
CHAIN = [_link("a", "."), _link("a/a2", "."), _link("a/a2/b", "../../victim"), _file("b/x.txt")]
CHAIN_REFUSED = r"member 'a/a2' would be written through the symlink 'a' \(a link to '\.'\)"


def _tar(path: Path, members: list) -> Path:
    with tarfile.open(path, "w") as tar:
        for member in members:
            info, data = member if isinstance(member, tuple) else (member, None)
            tar.addfile(info, None if data is None else io.BytesIO(data))
    return path


def _zip(path: Path, members: list) -> Path:
    """The same members in a zip: symlinks as Unix mode S_IFLNK entries holding the target."""
    with zipfile.ZipFile(path, "w") as zipped:
        for member in members:
            if isinstance(member, tuple):
                zipped.writestr(member[0].name, member[1])
            else:
                info = zipfile.ZipInfo(member.name)
                info.external_attr = 0o120777 << 16
                zipped.writestr(info, member.linkname)
    return path


@pytest.fixture(params=["stdlib filter", "no stdlib filter"])
def tar_filter(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """With and without tarfile's `data` filter (Python 3.10.0-3.10.11 and 3.11.0-3.11.3 lack
    it): the project's own check must stop every case alone."""
    if request.param == "no stdlib filter":
        monkeypatch.delattr(tarfile, "data_filter", raising=False)
    return request.param


def _tree(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def test_symlink_chain_in_a_tar_is_refused(tmp_path: Path, tar_filter: str) -> None:
    archive = _tar(tmp_path / "chain.tar", CHAIN)
    victim = tmp_path / "victim"  # where `../../victim` lands from the extraction folder
    victim.mkdir()
    (tmp_path / "out").mkdir()
    with pytest.raises(
        UnsafeArchiveError, match=r"Refusing to extract .*chain\.tar: " + CHAIN_REFUSED
    ):
        extract_archive(archive, tmp_path / "out" / "chain")
    assert _tree(victim) == []
    assert _tree(tmp_path / "out") == []  # no destination, no temporary folder


def test_symlink_chain_in_a_zip_is_refused(tmp_path: Path) -> None:
    # Zip symlinks are written as files holding the link text, so the chain cannot escape; it is
    # refused all the same, with the reason, instead of failing halfway on `a` being a file.
    archive = _zip(tmp_path / "chain.zip", CHAIN)
    (tmp_path / "out").mkdir()
    with pytest.raises(UnsafeArchiveError, match=CHAIN_REFUSED):
        extract_archive(archive, tmp_path / "out" / "chain")
    assert _tree(tmp_path / "out") == []


def _escapes(tmp_path: Path) -> dict[str, tuple[list, int, str]]:
    """Archives that write or point outside: (members, strip_components, expected reason)."""
    victim = tmp_path / "victim"
    return {
        "symlink chain": (CHAIN, 0, CHAIN_REFUSED),
        "dotdot member": ([_file("ok.txt"), _file("../victim/x.txt")], 0, r"contains '\.\.'"),
        "absolute link": (
            [_link("abs", str(victim)), _file("abs/x.txt")],
            0,
            rf"member 'abs' is a symlink to '{victim}', which leads outside the target folder",
        ),
        # `x/y` is the root, so `x/y/..` is its parent, though it reads as `x`
        "link through a link": (
            [_link("x/y", ".."), _link("z", "x/y/.."), _file("ok.txt")],
            0,
            r"member 'z' is a symlink to 'x/y/\.\.', which leads outside the target folder",
        ),
        # inside the archive's top folder, but that folder is stripped
        "stripped folder": (
            [_file("top/ok.txt"), _link("top/up", "../victim")],
            1,
            r"member 'top/up' is a symlink to '\.\./victim', which leads outside",
        ),
    }


@pytest.mark.parametrize(
    "case",
    ["symlink chain", "dotdot member", "absolute link", "link through a link", "stripped folder"],
)
def test_download_of_an_escaping_tar_says_it_was_refused_and_why(
    tmp_path: Path, tar_filter: str, case: str
) -> None:
    members, strip, reason = _escapes(tmp_path)[case]
    archive = _tar(tmp_path / "evil.tar", members)
    victim = tmp_path / "victim"
    victim.mkdir()
    root = tmp_path / "root"
    with pytest.raises(UnsafeArchiveError) as info:
        download_and_extract(archive.as_uri(), root, strip_components=strip, progress=False)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"Refusing to extract {root / 'evil.tar'}: "), message
    assert archive.as_uri() in message and "nothing was extracted" in message, message
    assert re.search(reason, message), message
    assert "cut short" not in message
    assert _tree(victim) == []
    assert _tree(root) == ["evil.tar"]  # no extraction folder, no temporary folder


def test_links_that_stay_inside_are_extracted(tmp_path: Path, tar_filter: str) -> None:
    members = [
        _file("data/real/x.txt", b"x"),
        _link("data/alias", "real"),
        _link("top/x.txt", "../data/alias/x.txt"),
    ]
    folder = extract_archive(_tar(tmp_path / "ok.tar", members), tmp_path / "out")
    assert (folder / "top" / "x.txt").read_bytes() == b"x"
    assert (folder / "data" / "alias").resolve() == (folder / "data" / "real").resolve()


# a full disk


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Callable[[int], Path]]:
    """Mounts tmpfs file systems of a given size in KiB under tmp_path; unmounts them after."""
    mounted: list[Path] = []

    def mount(kib: int) -> Path:
        if not sys.platform.startswith("linux") or shutil.which("mount") is None:
            pytest.skip("mounting a tmpfs needs Linux and mount(8)")
        folder = tmp_path / f"disk{len(mounted)}"
        folder.mkdir()
        command = ["mount", "-t", "tmpfs", "-o", f"size={kib}k", "tmpfs", str(folder)]
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here (root only): {result.stderr.strip()}")
        mounted.append(folder)
        return folder

    yield mount
    for folder in mounted:
        subprocess.run(["umount", str(folder)], check=False)


# 3 classes x 4 clips of 48 frames x 32 mel bins in float16, after the .npy header (magic,
# version, length and the dict padded to 128 bytes, numpy's format 1.0).
CLIPS, FRAMES, MEL_BINS = 12, 48, 32
CACHE_BYTES = 128 + CLIPS * FRAMES * MEL_BINS * 2


def _fit_config(tmp_path: Path, cache: Path) -> Path:
    config = tmp_path / "fit.yaml"
    text = tiny_run_config(synthetic_dataset(tmp_path / "synthetic"), cache=cache, frames=FRAMES)
    assert yaml.safe_load(text)["data"]["init_args"]["features"]["num_mel_bins"] == MEL_BINS
    config.write_text(text)
    return config


def test_fit_whose_feature_cache_does_not_fit_says_so(tmp_path: Path, small_disk) -> None:
    disk = small_disk(16)  # the cache needs about 37 KB
    config = _fit_config(tmp_path, disk)
    command = [sys.executable, "-m", "add_lightning.cli", "fit", "--config", str(config)]
    command += ["--trainer.default_root_dir", str(tmp_path / "run")]
    result = subprocess.run(command, env=console_env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 1, (result.returncode, result.stderr[-3000:])  # not SIGBUS
    errors = [line for line in result.stderr.splitlines() if line.startswith("add-lightning:")]
    assert len(errors) == 1, result.stderr[-3000:]
    assert errors[0].startswith("add-lightning: error: [Errno 28] Not enough space in ")
    assert f"{disk} for the feature cache of {CLIPS} clips" in errors[0]
    assert f"needs {CACHE_BYTES} bytes" in errors[0]
    assert list(disk.iterdir()) == []  # no partial array left to fill the disk


_KILLED_WRITER = """
import os, sys
from add_lightning.atomic import atomic_path
with atomic_path(sys.argv[1]) as tmp:
    tmp.write_bytes(bytes(int(sys.argv[2])))
    os._exit(0)  # dies as kill -9 would: no clean-up
"""


def _python(code: str, *args: object) -> subprocess.CompletedProcess:
    command = [sys.executable, "-c", code, *map(str, args)]
    return subprocess.run(command, env=console_env(), capture_output=True, text=True, timeout=300)


def test_build_removes_the_partial_file_of_a_killed_build(tmp_path: Path, small_disk) -> None:
    # Room for the cache or for the killed build's partial file, not both: the build succeeds
    # only if it removes that file first.
    disk = small_disk(64)
    left = disk / "fbank-0123456789abcdef0123.npy"
    assert _python(_KILLED_WRITER, left, 40_000).returncode == 0
    (stale,) = disk.iterdir()
    assert stale.name.startswith(f".{left.name}.") and stale.name.endswith(".tmp")
    from add_lightning.data import AudioDataModule, FbankOptions, SyntheticDataset

    dataset = SyntheticDataset(
        str(tmp_path / "synthetic"), num_classes=3, clips_per_class=4, num_folds=2, duration_s=0.5
    )
    features = FbankOptions(num_mel_bins=MEL_BINS, target_frames=FRAMES)
    AudioDataModule(dataset, features=features, cache_dir=str(disk)).prepare_data()
    assert not stale.exists()
    assert sorted(p.suffix for p in disk.iterdir()) == [".json", ".npy"]


def test_build_removes_only_the_temporary_files_of_writers_that_are_gone(tmp_path: Path) -> None:
    from add_lightning.data import AudioDataModule, FbankOptions, SyntheticDataset

    dataset = SyntheticDataset(
        str(tmp_path / "synthetic"), num_classes=3, clips_per_class=4, num_folds=2, duration_s=0.5
    )
    cache = tmp_path / "cache"
    cache.mkdir()
    assert _python(_KILLED_WRITER, cache / "killed.npy", 10).returncode == 0
    (killed,) = cache.iterdir()
    dead = _python("import os; print(os.getpid())").stdout.strip()  # a finished child's pid
    # on another host of a shared file system: its pid says nothing here
    remote = cache / f".fbank-x.npy.{dead}@another-host.0123abcd.tmp"
    # named by older versions, without the host: removed once nothing wrote to it for an hour
    old_fresh = cache / f".fbank-y.npy.{dead}.0123abcd.tmp"
    old_idle = cache / f".fbank-z.npy.{dead}.4567cdef.tmp"
    for path in (remote, old_fresh, old_idle):
        path.write_bytes(b"partial")
    two_hours_ago = old_idle.stat().st_mtime - 7200
    os.utime(old_idle, (two_hours_ago, two_hours_ago))
    with atomic_path(cache / "other.json") as running:  # this process is writing it
        running.write_text("{}")
        module = AudioDataModule(
            dataset,
            features=FbankOptions(num_mel_bins=MEL_BINS, target_frames=FRAMES),
            cache_dir=str(cache),
        )
        module.prepare_data()
        assert running.read_text() == "{}"
    assert not killed.exists() and not old_idle.exists()
    assert remote.is_file() and old_fresh.is_file()
    assert (cache / "other.json").read_text() == "{}"


def test_full_cache_folder_for_normalisation_names_the_file(tmp_path: Path, small_disk) -> None:
    from add_lightning.data import AudioDataModule, FbankOptions, SyntheticDataset

    disk = small_disk(16)
    (disk / "filler").write_bytes(bytes(16 * 1024))  # leaves no block free
    dataset = SyntheticDataset(
        str(tmp_path / "synthetic"), num_classes=3, clips_per_class=4, num_folds=2, duration_s=0.5
    )
    module = AudioDataModule(
        dataset,
        features=FbankOptions(num_mel_bins=MEL_BINS, target_frames=FRAMES),
        cache_dir=str(disk),
        cache_features=False,
    )
    module.prepare_data()
    with pytest.raises(
        OSError, match=r"Cannot store the normalisation statistics .*normalization-"
    ):
        module.setup("fit")
    assert sorted(p.name for p in disk.iterdir()) == ["filler"]
