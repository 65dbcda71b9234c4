/*
 * Inside a sandbox: the resident init that starts every command of the sandbox, in C.
 *
 * Usage: sandbox_init FD   (FD: a Unix stream socket to corral)
 *
 * The same program as sandbox_init.py, which documents the protocol and the guarantees; this one
 * is what corral runs when it can compile it (a fork of this process costs a fraction of a
 * Python one). corral compiles it once per machine with the host's C compiler and hands the binary
 * to bwrap as an inherited descriptor.
 *
 * Frames from corral: u32 length (big-endian), then op (1 byte: 'r' run, 'k' kill), u64 id
 * (big-endian) and, for 'r': u32 argc, u32 envc, then cwd, the argv strings and the KEY=VALUE
 * strings, each NUL-terminated. A 'r' frame carries the command's stdout and stderr (SCM_RIGHTS).
 * Answers: "R\n" once listening, "E <id> <code>\n" when a command's main process ends.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#define MAX_FRAME (64u * 1024u * 1024u)
#define MAX_COMMANDS 4096

extern char **environ;

struct command {
    pid_t pid;
    uint64_t id;
};

static struct command commands[MAX_COMMANDS];
static int command_count;
static int sock = -1;
static int devnull = -1;

static void fail(const char *what) {
    dprintf(2, "corral sandbox init: %s: %s\n", what, strerror(errno));
    _exit(125);
}

static void send_all(const char *data, size_t size) {
    while (size > 0) {
        ssize_t sent = send(sock, data, size, MSG_NOSIGNAL);
        if (sent < 0) {
            if (errno == EINTR) continue;
            _exit(0); /* corral is gone: the sandbox ends */
        }
        data += sent;
        size -= (size_t)sent;
    }
}

static void read_exact(char *buffer, size_t size) {
    while (size > 0) {
        ssize_t got = recv(sock, buffer, size, 0);
        if (got == 0) _exit(0);
        if (got < 0) {
            if (errno == EINTR) continue;
            _exit(0);
        }
        buffer += got;
        size -= (size_t)got;
    }
}

static uint64_t big_endian(const unsigned char *bytes, int size) {
    uint64_t value = 0;
    for (int i = 0; i < size; i++) value = value << 8 | bytes[i];
    return value;
}

static void write_file(const char *path, const char *data) {
    int fd = open(path, O_WRONLY | O_CLOEXEC);
    if (fd < 0) return;
    ssize_t ignored = write(fd, data, strlen(data));
    (void)ignored;
    close(fd);
}

/* Every process the pid namespace shows: (pid, ppid) pairs; returns how many, at most max. */
static int processes(pid_t *pids, pid_t *parents, int max) {
    DIR *proc = opendir("/proc");
    if (proc == NULL) return 0;
    int count = 0;
    struct dirent *entry;
    while ((entry = readdir(proc)) != NULL && count < max) {
        char *end;
        long pid = strtol(entry->d_name, &end, 10);
        if (*end != '\0' || pid <= 0) continue;
        char path[64], stat[512];
        snprintf(path, sizeof path, "/proc/%ld/stat", pid);
        int fd = open(path, O_RDONLY | O_CLOEXEC);
        if (fd < 0) continue;
        ssize_t size = read(fd, stat, sizeof stat - 1);
        close(fd);
        if (size <= 0) continue;
        stat[size] = '\0';
        char *close_paren = strrchr(stat, ')');
        if (close_paren == NULL) continue;
        char state;
        long parent;
        if (sscanf(close_paren + 1, " %c %ld", &state, &parent) != 2) continue;
        pids[count] = (pid_t)pid;
        parents[count] = (pid_t)parent;
        count++;
    }
    closedir(proc);
    return count;
}

static int find_pid(pid_t pid) {
    for (int i = 0; i < command_count; i++)
        if (commands[i].pid == pid) return i;
    return -1;
}

static int find_id(uint64_t id) {
    for (int i = 0; i < command_count; i++)
        if (commands[i].id == id) return i;
    return -1;
}

#define MAX_SEEN 65536
static pid_t seen_pids[MAX_SEEN], seen_parents[MAX_SEEN];

/* Kill a command and every descendant (each command is a subreaper: its descendants stay its own). */
static void kill_tree(pid_t root) {
    static pid_t doomed[MAX_SEEN];
    int count = processes(seen_pids, seen_parents, MAX_SEEN);
    int found = 0;
    doomed[found++] = root;
    for (int next = 0; next < found; next++)
        for (int i = 0; i < count && found < MAX_SEEN; i++)
            if (seen_parents[i] == doomed[next]) doomed[found++] = seen_pids[i];
    for (int i = 0; i < found; i++) kill(doomed[i], SIGKILL);
}

/* What ended commands left behind was reparented to this init: kill it (its own leftovers come next). */
static void kill_adopted(void) {
    pid_t me = getpid();
    int count = processes(seen_pids, seen_parents, MAX_SEEN);
    for (int i = 0; i < count; i++)
        if (seen_parents[i] == me && find_pid(seen_pids[i]) < 0) kill(seen_pids[i], SIGKILL);
}

static void reap(void) {
    int status;
    pid_t pid;
    while ((pid = waitpid(-1, &status, WNOHANG)) > 0) {
        int index = find_pid(pid);
        if (index < 0) continue;
        int code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
        char line[64];
        int size = snprintf(line, sizeof line, "E %llu %d\n", (unsigned long long)commands[index].id, code);
        commands[index] = commands[--command_count];
        send_all(line, (size_t)size);
    }
    kill_adopted();
}

static void child(char **argv, const char *cwd, char **envp, int out, int err, sigset_t *mask) {
    /* Dumpable again (exec would do it): until then /proc/self belongs to root and cannot be written. */
    prctl(PR_SET_DUMPABLE, 1, 0, 0, 0);
    prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0);
    setsid();
    signal(SIGPIPE, SIG_DFL);
    signal(SIGXFSZ, SIG_DFL);
    sigprocmask(SIG_UNBLOCK, mask, NULL);
    dup2(devnull, 0);
    dup2(out, 1);
    dup2(err, 2);
    if (syscall(SYS_close_range, 3, ~0U, 0) != 0)
        for (int fd = 3; fd < 1024; fd++) close(fd);
    write_file("/proc/self/oom_score_adj", "500");
    if (chdir(cwd) != 0) {
        dprintf(2, "corral: cannot run '%s': %s\n", argv[0], strerror(errno));
        _exit(126);
    }
    environ = envp; /* execvp looks the name up on the command's own PATH */
    execvp(argv[0], argv);
    int code = errno == ENOENT ? 127 : 126;
    dprintf(2, "corral: cannot run '%s': %s\n", argv[0], strerror(errno));
    _exit(code);
}

static void run(uint64_t id, char *body, size_t size, int out, int err, sigset_t *mask) {
    if (size < 8 || command_count >= MAX_COMMANDS) goto refuse;
    uint32_t argc = (uint32_t)big_endian((unsigned char *)body, 4);
    uint32_t envc = (uint32_t)big_endian((unsigned char *)body + 4, 4);
    if (argc == 0 || argc > size || envc > size) goto refuse;
    char **strings = calloc((size_t)argc + envc + 3, sizeof(char *));
    if (strings == NULL) goto refuse;
    char *cursor = body + 8, *end = body + size;
    for (uint32_t i = 0; i < 1 + argc + envc; i++) {
        char *nul = memchr(cursor, '\0', (size_t)(end - cursor));
        if (nul == NULL) {
            free(strings);
            goto refuse;
        }
        strings[i] = cursor;
        cursor = nul + 1;
    }
    char *cwd = strings[0];
    char **argv = strings + 1;          /* argv[argc] is NULL (calloc) */
    char **envp = strings + 2 + argc;   /* after argv's NULL; envp[envc] is NULL */
    memmove(envp, strings + 1 + argc, envc * sizeof(char *));
    envp[envc] = NULL;
    argv[argc] = NULL;
    pid_t pid = fork();
    if (pid == 0) child(argv, cwd, envp, out, err, mask);
    if (pid < 0) {
        dprintf(err, "corral: cannot start '%s': %s\n", argv[0], strerror(errno));
        free(strings);
        goto refuse;
    }
    free(strings);
    close(out);
    close(err);
    commands[command_count].pid = pid;
    commands[command_count].id = id;
    command_count++;
    return;
refuse:
    close(out);
    close(err);
    char line[64];
    int length = snprintf(line, sizeof line, "E %llu 126\n", (unsigned long long)id);
    send_all(line, (size_t)length);
}

static void receive(sigset_t *mask) {
    unsigned char header[4];
    char control[CMSG_SPACE(2 * sizeof(int))];
    struct iovec iov = {.iov_base = header, .iov_len = sizeof header};
    struct msghdr message = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = control, .msg_controllen = sizeof control};
    ssize_t got = recvmsg(sock, &message, MSG_CMSG_CLOEXEC);
    if (got <= 0) {
        if (got < 0 && errno == EINTR) return;
        _exit(0);
    }
    int fds[2] = {-1, -1}, fd_count = 0;
    for (struct cmsghdr *cmsg = CMSG_FIRSTHDR(&message); cmsg != NULL; cmsg = CMSG_NXTHDR(&message, cmsg)) {
        if (cmsg->cmsg_level != SOL_SOCKET || cmsg->cmsg_type != SCM_RIGHTS) continue;
        int n = (int)((cmsg->cmsg_len - CMSG_LEN(0)) / sizeof(int));
        int *passed = (int *)CMSG_DATA(cmsg);
        for (int i = 0; i < n; i++) {
            if (fd_count < 2) fds[fd_count++] = passed[i];
            else close(passed[i]);
        }
    }
    if (got < 4) read_exact((char *)header + got, 4 - (size_t)got);
    uint32_t size = (uint32_t)big_endian(header, 4);
    if (size < 9 || size > MAX_FRAME) {
        dprintf(2, "corral sandbox init: a frame of %u bytes\n", size);
        _exit(125);
    }
    char *frame = malloc((size_t)size + 1);
    if (frame == NULL) fail("malloc");
    read_exact(frame, size);
    frame[size] = '\0';
    uint64_t id = big_endian((unsigned char *)frame + 1, 8);
    if (frame[0] == 'r' && fd_count == 2) {
        run(id, frame + 9, size - 9, fds[0], fds[1], mask);
    } else {
        for (int i = 0; i < fd_count; i++) close(fds[i]);
        if (frame[0] == 'k') {
            int index = find_id(id);
            if (index >= 0) kill_tree(commands[index].pid);
        }
    }
    free(frame);
}

int main(int argc, char **argv) {
    if (argc != 2) {
        dprintf(2, "usage: sandbox_init FD\n");
        return 125;
    }
    sock = atoi(argv[1]);
    /* The egress relay starts its command with a high oom_score_adj meant for commands: back to the
     * parent's (no privilege needed), while /proc/self is still writable (before non-dumpable). */
    char path[64], value[32];
    snprintf(path, sizeof path, "/proc/%d/oom_score_adj", (int)getppid());
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd >= 0) {
        ssize_t size = read(fd, value, sizeof value - 1);
        close(fd);
        if (size > 0) {
            value[size] = '\0';
            write_file("/proc/self/oom_score_adj", value);
        }
    }
    if (prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) != 0) fail("prctl(PR_SET_DUMPABLE)");
    if (prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0) fail("prctl(PR_SET_CHILD_SUBREAPER)");
    devnull = open("/dev/null", O_RDWR | O_CLOEXEC);
    if (devnull < 0) fail("open /dev/null");
    int flags = fcntl(sock, F_GETFD);
    if (flags < 0 || fcntl(sock, F_SETFD, flags | FD_CLOEXEC) != 0) fail("the socket");
    sigset_t mask;
    sigemptyset(&mask);
    sigaddset(&mask, SIGCHLD);
    if (sigprocmask(SIG_BLOCK, &mask, NULL) != 0) fail("sigprocmask");
    int children = signalfd(-1, &mask, SFD_CLOEXEC | SFD_NONBLOCK);
    if (children < 0) fail("signalfd");
    send_all("R\n", 2);
    struct pollfd watched[2] = {{.fd = sock, .events = POLLIN}, {.fd = children, .events = POLLIN}};
    for (;;) {
        if (poll(watched, 2, -1) < 0) {
            if (errno == EINTR) continue;
            fail("poll");
        }
        if (watched[1].revents) {
            struct signalfd_siginfo info;
            while (read(children, &info, sizeof info) == sizeof info) {
            }
            reap();
        }
        if (watched[0].revents) receive(&mask);
    }
}
