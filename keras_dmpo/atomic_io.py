"""Crash-safe file writes: temporary names, ``os.replace``, fsync, and locks.

Standard library only (no numpy, Keras or TensorFlow), so the export checks
and the CLI can use it before anything heavy is imported. docs/reliability.md
describes the guarantees built on it.

A writer puts its bytes under a hidden temporary name in the target's own
directory (``.NAME.partial-<pid>-<random>``), flushes them to disk, and then
renames them over the target with ``os.replace``, which POSIX makes atomic: a
reader (or a process killed at any moment) sees the old file or the new one,
never a mixture. Temporary names are recognised by ``is_partial_name`` so
that directory checks can ignore the debris of a killed writer.
"""

import contextlib
import ctypes
import errno
import fcntl
import json
import os
import secrets
import sys

# Hashing needs no lock, so it lives in a module without fcntl and ctypes
# (the LiteRT runtime imports that one); the name stays here for the code
# that hashes what it writes through this module.
from keras_dmpo.hashing import sha256_file  # noqa: F401

PARTIAL_MARK = ".partial-"


def partial_path(path, suffix=""):
    """A fresh hidden temporary name beside ``path`` (same directory, so the
    final ``os.replace`` never crosses file systems). ``suffix`` keeps an
    extension some writers insist on (Keras wants ``.keras``)."""
    directory, base = os.path.split(os.path.abspath(os.fspath(path)))
    token = f"{os.getpid()}-{secrets.token_hex(4)}"
    return os.path.join(directory, f".{base}{PARTIAL_MARK}{token}{suffix}")


def is_partial_name(name):
    """Whether a directory entry is a temporary name of an unfinished write."""
    return name.startswith(".") and PARTIAL_MARK in name


def fsync_file(path):
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_directory(directory):
    """Make renames inside ``directory`` durable (best effort)."""
    try:
        fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def replace_file(temporary, path):
    """Flush ``temporary`` to disk and rename it over ``path`` atomically."""
    fsync_file(temporary)
    os.replace(temporary, path)
    fsync_directory(os.path.dirname(os.path.abspath(path)) or ".")


def exchange_paths(first, second):
    """Swap two existing paths atomically (Linux ``renameat2`` with
    ``RENAME_EXCHANGE``). Returns False, changing nothing, where the system
    or the file system does not support it."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    renameat2.restype = ctypes.c_int
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(first), at_fdcwd, os.fsencode(second), rename_exchange) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.EPERM):
        return False
    raise OSError(code, os.strerror(code), first)


def remove_quietly(path):
    try:
        os.remove(path)
    except FileNotFoundError:
        pass


def write_bytes_atomic(path, payload):
    """Write ``payload`` to ``path`` so that readers see all of it or the old file."""
    temporary = partial_path(path)
    try:
        with open(temporary, "xb") as handle:
            handle.write(payload)
        replace_file(temporary, path)
    except BaseException:
        remove_quietly(temporary)
        raise


def write_json_atomic(path, value):
    """``json.dump`` to ``path`` atomically (indented, trailing newline)."""
    text = json.dumps(value, indent=2) + "\n"
    write_bytes_atomic(path, text.encode("utf-8"))


class LockedError(FileExistsError):
    """Another process holds the lock (raised by ``exclusive_lock(blocking=False)``)."""


@contextlib.contextmanager
def exclusive_lock(lock_path, blocking=True, what="writing here"):
    """Hold an ``fcntl.flock`` on ``lock_path``; the file is removed on release.

    Removing a lock file is safe because a process that gets the lock checks
    that the path still names the file it locked (else it retries), so two
    processes can never both believe they hold it.

    Args:
        lock_path: the lock file (created if needed), normally a hidden name
            beside the thing it protects.
        blocking: wait for the lock; with ``False`` raise ``LockedError``
            at once when another process holds it.
        what: what the holder is doing, for the error message.
    """
    while True:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except OSError as error:
            os.close(fd)
            if error.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise LockedError(
                    f"Another process is {what} right now (it holds the lock file "
                    f"{lock_path!r}); wait for it to finish, or choose another path."
                ) from None
            raise
        try:
            same = os.path.samestat(os.fstat(fd), os.stat(lock_path))
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)  # the holder before us removed the file: lock the new one
    try:
        yield lock_path
    finally:
        try:
            os.remove(lock_path)
        except OSError:
            pass
        os.close(fd)
