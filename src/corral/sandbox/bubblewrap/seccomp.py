"""The sandbox's seccomp filter: built once per process with libseccomp (through ctypes), exported as BPF."""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import functools
import os
import platform

from corral.errors import SandboxError

# Flags and values from the kernel and libseccomp headers.
_ACT_ALLOW = 0x7FFF0000
_ACT_ERRNO = 0x00050000
_CMP_MASKED_EQ = 7
_ARCH_X86 = 0x40000003
_ARCH_X32 = 0x4000003E
_FLTATR_CTL_NNP = 3  # libseccomp's "set no_new_privs" attribute; bwrap sets it itself

CLONE_NAMESPACE_FLAGS = {
    "CLONE_NEWNS": 0x00020000,
    "CLONE_NEWCGROUP": 0x02000000,
    "CLONE_NEWUTS": 0x04000000,
    "CLONE_NEWIPC": 0x08000000,
    "CLONE_NEWUSER": 0x10000000,
    "CLONE_NEWPID": 0x20000000,
    "CLONE_NEWNET": 0x40000000,
    "CLONE_NEWTIME": 0x00000080,
}
# personality(2) bits that weaken the process: no ASLR, executable data, a mapping at address 0.
_PERSONALITY_FLAGS = {"ADDR_NO_RANDOMIZE": 0x0040000, "READ_IMPLIES_EXEC": 0x0400000, "MMAP_PAGE_ZERO": 0x0100000}
_PERSONALITY_QUERY_BIT = 0x80000000  # set only in 0xffffffff, "tell me the current persona", which stays allowed
_TIOCSTI, _TIOCLINUX = 0x5412, 0x541C

DENIED_SYSCALLS: dict[str, str] = {
    # Inspecting or steering other processes.
    "ptrace": "trace other processes",
    "process_vm_readv": "read another process's memory",
    "process_vm_writev": "write another process's memory",
    "process_madvise": "advise on another process's memory",
    "pidfd_getfd": "steal another process's file descriptors",
    "kcmp": "compare kernel objects of other processes",
    # Mounts and the filesystem tree.
    "mount": "mount filesystems",
    "umount2": "unmount filesystems",
    "pivot_root": "change the root mount",
    "chroot": "change the root directory",
    "move_mount": "move mounts",
    "open_tree": "clone mounts",
    "fsopen": "create filesystem contexts",
    "fsconfig": "configure filesystem contexts",
    "fsmount": "create mounts",
    "fspick": "reconfigure mounts",
    "mount_setattr": "change mount attributes",
    "open_by_handle_at": "open files by handle, around path checks",
    # Namespaces: entering any is refused; new ones are refused per flag below.
    "setns": "enter other namespaces",
    # Kernel attack surface a build or test never needs.
    "bpf": "load BPF programs",
    "perf_event_open": "open performance counters",
    "userfaultfd": "handle page faults in user space",
    "keyctl": "use the kernel keyring",
    "add_key": "add kernel keys",
    "request_key": "request kernel keys",
    "io_uring_setup": "use io_uring",
    "io_uring_enter": "use io_uring",
    "io_uring_register": "use io_uring",
    "fanotify_init": "watch the whole filesystem",
    "lookup_dcookie": "resolve directory cookies",
    "syslog": "read the kernel log",
    # The machine itself.
    "init_module": "load kernel modules",
    "finit_module": "load kernel modules",
    "delete_module": "unload kernel modules",
    "kexec_load": "load a new kernel",
    "kexec_file_load": "load a new kernel",
    "reboot": "reboot",
    "swapon": "enable swap",
    "swapoff": "disable swap",
    "acct": "switch process accounting",
    "quotactl": "change disk quotas",
    "quotactl_fd": "change disk quotas",
    "iopl": "raise the I/O privilege level",
    "ioperm": "access I/O ports",
    "settimeofday": "set the clock",
    "clock_settime": "set the clock",
    "clock_adjtime": "adjust the clock",
    "vhangup": "hang up the terminal",
    "uselib": "load a shared library the obsolete way",
    "nfsservctl": "control the NFS server",
}
"""System calls that fail with EPERM inside the sandbox, and what each would let a process do."""

NOT_IMPLEMENTED_SYSCALLS = ("clone3",)
"""Fail with ENOSYS: clone3 passes its flags in memory a filter cannot read, so libc falls back to clone."""


class _ArgCmp(ctypes.Structure):
    """struct scmp_arg_cmp."""

    _fields_ = [
        ("arg", ctypes.c_uint),
        ("op", ctypes.c_int),
        ("datum_a", ctypes.c_uint64),
        ("datum_b", ctypes.c_uint64),
    ]


@functools.cache
def _libseccomp() -> ctypes.CDLL:
    name = ctypes.util.find_library("seccomp") or "libseccomp.so.2"
    try:
        lib = ctypes.CDLL(name, use_errno=True)
    except OSError as exc:
        raise SandboxError(
            f"libseccomp is not installed ({exc})",
            hint="install it (Debian/Ubuntu: apt-get install libseccomp2; Fedora: dnf install libseccomp)",
        ) from None
    lib.seccomp_init.restype = ctypes.c_void_p
    lib.seccomp_init.argtypes = [ctypes.c_uint32]
    lib.seccomp_release.argtypes = [ctypes.c_void_p]
    lib.seccomp_arch_add.argtypes = [ctypes.c_void_p, ctypes.c_uint32]
    lib.seccomp_attr_set.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_uint32]
    lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
    lib.seccomp_rule_add_array.argtypes = [
        ctypes.c_void_p,
        ctypes.c_uint32,
        ctypes.c_int,
        ctypes.c_uint,
        ctypes.POINTER(_ArgCmp),
    ]
    lib.seccomp_export_bpf.argtypes = [ctypes.c_void_p, ctypes.c_int]
    return lib


def _errno_action(code: int) -> int:
    return _ACT_ERRNO | (code & 0xFFFF)


def _add(lib: ctypes.CDLL, ctx: int, action: int, name: str, *cmps: tuple[int, int, int, int]) -> None:
    number = lib.seccomp_syscall_resolve_name(name.encode())
    if number < 0:  # not a system call on this architecture (e.g. iopl on arm64)
        return
    array = (_ArgCmp * len(cmps))(*(_ArgCmp(*cmp) for cmp in cmps)) if cmps else None
    result = lib.seccomp_rule_add_array(ctx, action, number, len(cmps), array)
    if result < 0:
        raise SandboxError(f"libseccomp refused the rule for {name}: {os.strerror(-result)}")


@functools.cache
def seccomp_filter() -> bytes:
    """The BPF program (native byte order) bwrap loads with ``--seccomp FD``; built once per process."""
    lib = _libseccomp()
    ctx = lib.seccomp_init(_ACT_ALLOW)
    if not ctx:
        raise SandboxError("libseccomp could not create a filter context")
    try:
        lib.seccomp_attr_set(ctx, _FLTATR_CTL_NNP, 0)
        if platform.machine() == "x86_64":
            # The same rules for 32-bit and x32 system calls: otherwise `int 0x80` would go around them.
            for arch in (_ARCH_X86, _ARCH_X32):
                if lib.seccomp_arch_add(ctx, arch) not in (0, -errno.EEXIST):
                    raise SandboxError("libseccomp could not add the 32-bit architectures")
        eperm = _errno_action(errno.EPERM)
        for name in DENIED_SYSCALLS:
            _add(lib, ctx, eperm, name)
        for name in NOT_IMPLEMENTED_SYSCALLS:
            _add(lib, ctx, _errno_action(errno.ENOSYS), name)
        for flag in CLONE_NAMESPACE_FLAGS.values():
            # A rule per flag: rules for one system call are OR-ed, comparisons within a rule AND-ed.
            _add(lib, ctx, eperm, "unshare", (0, _CMP_MASKED_EQ, flag, flag))
            _add(lib, ctx, eperm, "clone", (0, _CMP_MASKED_EQ, flag, flag))
        for flag in _PERSONALITY_FLAGS.values():
            _add(lib, ctx, eperm, "personality", (0, _CMP_MASKED_EQ, flag | _PERSONALITY_QUERY_BIT, flag))
        for request in (_TIOCSTI, _TIOCLINUX):  # typing into, or reconfiguring, a terminal we might share
            _add(lib, ctx, eperm, "ioctl", (1, _CMP_MASKED_EQ, 0xFFFFFFFF, request))
        memfd = os.memfd_create("corral-seccomp", os.MFD_CLOEXEC)
        try:
            result = lib.seccomp_export_bpf(ctx, memfd)
            if result < 0:
                raise SandboxError(f"libseccomp could not export the filter: {os.strerror(-result)}")
            size = os.fstat(memfd).st_size
            return os.pread(memfd, size, 0)
        finally:
            os.close(memfd)
    finally:
        lib.seccomp_release(ctx)


def seccomp_available() -> tuple[bool, str]:
    """Whether the filter can be built here, and a one-line description for ``corral doctor``."""
    try:
        program = seccomp_filter()
    except SandboxError as exc:
        return False, exc.message
    return True, f"{len(DENIED_SYSCALLS) + 2} system calls denied, new namespaces refused ({len(program) // 8} BPF ops)"
