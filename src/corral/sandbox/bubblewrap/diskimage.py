"""A hard disk limit per sandbox: its changes and home live on a sparse ext4 image of ``disk_mb``, loop-mounted."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import functools
import os
import shutil
import stat
import struct
import tempfile
from pathlib import Path

from corral.sandbox.bubblewrap.syscalls import check, libc
from corral.sandbox.proc import run_process

_LOOP_CTL_GET_FREE = 0x4C82
_LOOP_CONFIGURE = 0x4C0A  # Linux 5.8+
_LO_FLAGS_AUTOCLEAR = 4  # the loop device detaches itself when the filesystem is unmounted
_LOOP_MAJOR = 7
_MS_NOSUID, _MS_NODEV = 0x2, 0x4
_MKFS_TIMEOUT = 60.0
_ATTACH_ATTEMPTS = 8


@functools.cache
def loop_images_available() -> bool:
    """Whether this process can make and loop-mount ext4 images (root, /dev/loop-control, mkfs.ext4)."""
    return os.geteuid() == 0 and os.path.exists("/dev/loop-control") and shutil.which("mkfs.ext4") is not None


def _cache_root() -> Path:
    return Path("/run/corral/images")


async def _template(size_mb: int) -> Path:
    """An empty formatted image of ``size_mb``, made once and copied (sparsely: a few MB) per sandbox."""
    target = _cache_root() / f"ext4-{size_mb}m.img"
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=".building-", dir=target.parent)
    os.close(fd)
    building = Path(name)
    try:
        os.truncate(building, size_mb * 1024 * 1024)
        mkfs = shutil.which("mkfs.ext4") or "/usr/sbin/mkfs.ext4"
        # Lazy init: nothing is zeroed now, so the image stays sparse; 0% reserved for root.
        options = "lazy_itable_init=1,lazy_journal_init=1,nodiscard"
        argv = [mkfs, "-q", "-F", "-m", "0", "-L", "corral", "-E", options, str(building)]
        await run_process(argv, timeout=_MKFS_TIMEOUT)
        os.rename(building, target)
    finally:
        _discard(building)
    return target


def _discard(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def _copy_sparse(source: Path, target: Path) -> None:
    """Copy only the data extents of ``source`` (an almost empty image); holes stay holes."""
    with open(source, "rb") as src, open(target, "xb") as dst:
        os.fchmod(dst.fileno(), 0o600)
        size = os.fstat(src.fileno()).st_size
        offset = 0
        while offset < size:
            try:
                start = os.lseek(src.fileno(), offset, os.SEEK_DATA)
            except OSError as exc:
                if exc.errno == errno.ENXIO:  # no data after offset
                    break
                raise
            end = os.lseek(src.fileno(), start, os.SEEK_HOLE)
            copied = start
            while copied < end:
                count = os.copy_file_range(src.fileno(), dst.fileno(), end - copied, copied, copied)
                if count == 0:
                    break
                copied += count
            offset = end
        os.ftruncate(dst.fileno(), size)


async def create_image(image: Path, size_mb: int) -> None:
    image.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    _copy_sparse(await _template(size_mb), image)


def _loop_info(flags: int) -> bytes:
    # struct loop_info64: 5 x u64, 4 x u32, 64 + 64 + 32 bytes of names and key, 2 x u64.
    return struct.pack("=5Q4I64s64s32s2Q", 0, 0, 0, 0, 0, 0, 0, 0, flags, b"", b"", b"", 0, 0)


def mount_image(image: Path, mount_point: Path) -> None:
    """Attach ``image`` to a free loop device and mount it (nodev, nosuid, discard) at ``mount_point``."""
    control = os.open("/dev/loop-control", os.O_RDWR | os.O_CLOEXEC)
    try:
        for _attempt in range(_ATTACH_ATTEMPTS):
            number = fcntl.ioctl(control, _LOOP_CTL_GET_FREE)
            device = Path(f"/dev/loop{number}")
            if not device.exists():  # a container's /dev may lack nodes the kernel just made
                with contextlib.suppress(FileExistsError):
                    os.mknod(device, stat.S_IFBLK | 0o600, os.makedev(_LOOP_MAJOR, number))
            loop_fd = os.open(device, os.O_RDWR | os.O_CLOEXEC)
            try:
                image_fd = os.open(image, os.O_RDWR | os.O_CLOEXEC)
                try:
                    config = struct.pack("=II", image_fd, 0) + _loop_info(_LO_FLAGS_AUTOCLEAR) + bytes(64)
                    fcntl.ioctl(loop_fd, _LOOP_CONFIGURE, config)
                except OSError as exc:
                    if exc.errno == errno.EBUSY:  # another process took this device first
                        continue
                    raise
                finally:
                    os.close(image_fd)
                flags = _MS_NOSUID | _MS_NODEV
                check(
                    libc().mount(os.fsencode(device), os.fsencode(mount_point), b"ext4", flags, b"discard"),
                    "mount disk image",
                )
                return
            finally:
                os.close(loop_fd)  # with AUTOCLEAR, the device is freed once the mount goes too
        raise OSError(errno.EBUSY, "no free loop device")
    finally:
        os.close(control)


_DETACH_WAIT_S = 2.0
_DELETED_SUFFIX = " (deleted)"


def loop_devices_for(image: Path) -> list[str]:
    """The loop devices (``loopN``) still backed by ``image``, even after it was unlinked."""
    wanted = os.fsdecode(image)
    found = []
    for backing in Path("/sys/block").glob("loop*/loop/backing_file"):
        try:
            name = backing.read_text().rstrip("\n")
        except OSError:  # detached between the glob and the read
            continue
        if name.removesuffix(_DELETED_SUFFIX) == wanted:
            found.append(backing.parent.parent.name)
    return sorted(found)


async def wait_detached(image: Path, *, seconds: float = _DETACH_WAIT_S) -> list[str]:
    """Wait until no loop device is backed by ``image``; return the ones still attached after ``seconds``.

    The image's device was configured with LO_FLAGS_AUTOCLEAR, so unmounting its filesystem detaches
    it, but the kernel does that in a work item after umount(2) returns; until then the device still
    holds the image (shown as ``(deleted)`` once it is unlinked).
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    delay = 0.005
    while True:
        attached = loop_devices_for(image)
        if not attached or loop.time() >= deadline:
            return attached
        await asyncio.sleep(delay)
        delay = min(delay * 2, 0.1)
