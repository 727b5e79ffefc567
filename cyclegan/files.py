"""Small file mechanisms every module shares: atomic writes and renames, downloads, one-line errors."""
from __future__ import annotations

import fcntl
import os
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, Callable, Iterator


def write_atomic(path: str | os.PathLike, data: bytes | Callable[[BinaryIO], object],
                 previous: str | os.PathLike | None = None, durable: bool = True) -> Path:
    """Write `data` (bytes, or a function that writes to a binary file) so that a reader or a crash
    sees the old file or the new one, never a part: a temp file beside it, flushed to disk, renamed
    over it. With `previous`, the old file is first renamed there instead of being replaced.
    `durable=False` skips the flush to disk, for caches that a crash may lose (readers still never
    see a part)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as f:
            if callable(data):
                data(f)
            else:
                f.write(data)
            if durable:
                f.flush()
                os.fsync(f.fileno())
    except BaseException:  # the old file stays as it was, and no half-written temp file is left
        tmp.unlink(missing_ok=True)
        raise
    if previous is not None and path.exists():
        os.replace(path, previous)
    os.replace(tmp, path)
    return path


def move_into_place(tmp: str | os.PathLike, target: str | os.PathLike) -> Path:
    """Rename the finished temp file or folder `tmp` to `target`, replacing what is there, so that a reader
    never sees a half-made one. A file goes in with one atomic rename. A folder cannot be renamed over a
    folder, so the old one is first renamed aside to .NAME.old and deleted only once the new one is in; if
    that rename fails, the old one is put back (a crash in between leaves it as .NAME.old)."""
    tmp, target = Path(tmp), Path(target)
    if not (tmp.is_dir() and target.exists()):
        os.replace(tmp, target)
        return target
    old = target.with_name(f".{target.name}.old")
    shutil.rmtree(old, ignore_errors=True)  # left by an earlier crash
    os.replace(target, old)
    try:
        os.replace(tmp, target)
    except BaseException:
        os.replace(old, target)
        raise
    shutil.rmtree(old)
    return target


@contextmanager
def locked(path: str | os.PathLike) -> Iterator[None]:
    """Hold an exclusive lock on the file `path` (made if missing) across processes: an flock, which dies
    with its holder, so a crash never leaves it taken."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield


class DownloadError(ConnectionError, RuntimeError):
    """A download that failed: the message names the URL and why."""


class DownloadStopped(DownloadError):
    """A download stopped on request; its `.part` file is kept for a resume."""


def one_line(error: BaseException, limit: int = 500) -> str:
    """An exception's message on one line, at most `limit` characters: for `error: ...` lines."""
    return " ".join(str(error).split())[:limit]


def download(url: str, target: str | os.PathLike, timeout: float = 60,
             stop: Callable[[], bool] | None = None) -> Path:
    """Download `url` to `target` with a progress bar. The bytes go to `target.part` first, which a
    later call resumes (HTTP Range; a server that ignores Range sends the whole file again), and the
    file is renamed into place only when complete. Failures raise DownloadError naming the URL;
    `stop()`, asked as the bytes come, ends it early with DownloadStopped."""
    import urllib.error
    import urllib.request

    from tqdm.auto import tqdm

    target = Path(target)
    part = target.with_name(target.name + ".part")
    done = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={done}-"} if done else {})
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as e:
        if e.code != 416:  # 416: the .part file already holds every byte
            raise DownloadError(f"cannot download {url}: HTTP {e.code} {e.reason}") from None
        response = None
    except (urllib.error.URLError, OSError) as e:
        raise DownloadError(f"cannot download {url}: {getattr(e, 'reason', e)}") from None
    if response is not None:
        with response:
            if done and response.status != 206:
                done = 0
            length = response.headers.get("Content-Length")
            total = int(length) + done if length else None
            try:
                with open(part, "ab" if done else "wb") as f, tqdm(total=total, initial=done, unit="B",
                                                                    unit_scale=True, desc=target.name) as bar:
                    while chunk := response.read1(1 << 20):  # what has come, up to 1 MB
                        f.write(chunk)
                        bar.update(len(chunk))
                        if stop is not None and stop():
                            raise DownloadStopped(f"stopped during the download of {url}: the {bar.n / 1e6:.1f} MB "
                                                  f"received are kept, and the next try goes on from there")
            except DownloadStopped:
                raise
            except OSError as e:  # timeouts and dropped connections; the .part file is kept for a resume
                raise DownloadError(f"cannot download {url}: {e}") from None
        if total is not None and part.stat().st_size != total:
            raise DownloadError(f"cannot download {url}: got {part.stat().st_size} of {total} bytes; run again to resume")
    os.replace(part, target)
    return target
