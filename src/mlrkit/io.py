"""Safe file I/O: a restricted unpickler for third-party label files, and atomic writes."""

from __future__ import annotations

import contextlib
import io
import os
import pickle
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

_ALLOWED_GLOBALS = {
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("builtins", "dict"),
    ("builtins", "list"),
    ("builtins", "tuple"),
    ("collections", "OrderedDict"),
    ("_codecs", "encode"),
}


class UnsafePickleError(pickle.UnpicklingError):
    pass


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED_GLOBALS:
            return super().find_class(module, name)
        raise UnsafePickleError(
            f"refusing to load {module}.{name}: only numpy arrays, lists and dicts are allowed")


def safe_load_pickle(path: str | os.PathLike[str]) -> Any:
    """Load a pickle that may hold only numpy arrays, scalars, lists, tuples and dicts."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: file not found") from None
    try:
        return _RestrictedUnpickler(io.BytesIO(data), encoding="latin1").load()
    except UnsafePickleError as e:
        raise UnsafePickleError(f"{path}: {e}") from None
    except Exception as e:  # noqa: BLE001 - corrupt pickles raise many types
        raise ValueError(f"{path}: not a readable pickle ({type(e).__name__}: {e})") from None


def _create_temp(path: Path) -> tuple[int, str]:
    """Create ``.<name>.<random>.tmp`` beside ``path``, exclusively, with the mode that
    ``open()`` would give a new file (0666 less the umask). ``tempfile.mkstemp`` would make it
    0600 whatever the umask, and the rename would carry that mode to ``path``."""
    flags = (os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
             | getattr(os, "O_BINARY", 0))
    for _ in range(100):
        tmp = os.path.join(path.parent, f".{path.name}.{secrets.token_hex(4)}.tmp")
        try:
            return os.open(tmp, flags, 0o666), tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"{path.parent}: no free temporary name for {path.name}")


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike[str], mode: str = "wb") -> Iterator[IO[Any]]:
    """Write ``path`` through a temp file in the same folder, renamed into place on success.

    A crash mid-write leaves the previous file untouched. The new file gets the mode a plain
    ``open()`` would give it: 0666 less the process's umask.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _create_temp(path)
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def file_digest(path: str | os.PathLike[str], length: int = 12) -> str:
    """The first ``length`` hex digits of a file's SHA-256 (read in 1 MiB chunks)."""
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:length]


def open_rgb(path: str | os.PathLike[str], max_pixels: int | None = None) -> Any:
    """Decode an image file as RGB; ``FileNotFoundError`` / ``ValueError`` name the file.

    ``max_pixels`` is Pillow's decompression-bomb limit for this call (``None``: Pillow's
    current one, ``0``: no limit); a bigger image is refused with the file named.
    """

    with _pixel_limit(max_pixels):
        return _open_rgb(path)


@contextlib.contextmanager
def _pixel_limit(max_pixels: int | None) -> Iterator[None]:
    """Pillow's ``MAX_IMAGE_PIXELS`` set to ``max_pixels`` inside the block, restored after
    (the setting is process-wide; DataLoader workers are processes of their own)."""
    from PIL import Image

    prev = Image.MAX_IMAGE_PIXELS
    if max_pixels is not None:
        Image.MAX_IMAGE_PIXELS = int(max_pixels) or None
    try:
        yield
    finally:
        Image.MAX_IMAGE_PIXELS = prev


def _open_rgb(path: str | os.PathLike[str]) -> Any:
    from PIL import Image

    try:
        with Image.open(path) as im:
            return im.convert("RGB")
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: image file not found") from None
    except Image.DecompressionBombError as e:
        raise ValueError(f"{path}: not decoded: {e.args[0].split(',')[0]} (Pillow's guard "
                         "against decompression bombs); if the image is genuine, raise the "
                         "limit with data.max_image_pixels=N (0: no limit) or mlrkit predict "
                         "--max-image-pixels N") from None
    except (OSError, SyntaxError) as e:
        raise ValueError(f"{path}: cannot decode image ({e})") from None


class FileLock:
    """An exclusive (or shared) ``fcntl`` lock on ``path``, held while the object is entered.

    ``blocking=False`` raises ``LockedError`` at once when another process holds the lock.
    The lock dies with the process (a killed run never leaves a stale lock). On platforms
    without ``fcntl`` it does nothing.
    """

    def __init__(self, path: str | os.PathLike[str], shared: bool = False,
                 blocking: bool = True, what: str = "") -> None:
        self.path = Path(path)
        self.shared = shared
        self.blocking = blocking
        self.what = what or str(self.path)
        self._fd: int | None = None

    def acquire(self) -> FileLock:
        try:
            import fcntl
        except ImportError:  # pragma: no cover - Windows
            return self
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        flags = (fcntl.LOCK_SH if self.shared else fcntl.LOCK_EX) | (
            0 if self.blocking else fcntl.LOCK_NB)
        try:
            fcntl.flock(fd, flags)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip()
            os.close(fd)
            raise LockedError(f"{self.what}: in use by another mlrkit process"
                              f"{f' (pid {holder})' if holder else ''}") from None
        except BaseException:
            os.close(fd)
            raise
        if not self.shared:
            os.ftruncate(fd, 0)
            os.pwrite(fd, str(os.getpid()).encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the flock
            self._fd = None

    def __enter__(self) -> FileLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


class LockedError(RuntimeError):
    """Another process holds the lock of a run directory or feature cache."""


def remove_stale_temps(folder: str | os.PathLike[str]) -> list[Path]:
    """Delete the ``.<name>.*.tmp`` files that ``atomic_write`` leaves when its process is
    killed mid-write; call it only while holding the folder's lock. Returns what it removed."""
    removed = []
    folder = Path(folder)
    if folder.is_dir():
        for p in folder.glob(".*.tmp"):
            with contextlib.suppress(FileNotFoundError):
                p.unlink()
                removed.append(p)
    return removed


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    with atomic_write(path, "w") as f:
        f.write(text)
