/*
 * kiln-launch: the first program of a `kiln` command (cli/bin/kiln.js's shell line runs it).
 *
 * A `kiln build` handed to a fresh Node process pays Node's start, the bundle's load and the
 * first run of its code (~70-90 ms of a fully cached build that takes ~150 ms). So each finished
 * build leaves one client process started and loaded, waiting on a unix socket in the user's
 * cache dir (cli/src/zygote.ts, "the warm client"). This program connects to one, hands it the
 * command (argv, cwd, umask, environment, and its standard input, output and error themselves,
 * as descriptors: SCM_RIGHTS), forwards the signals it receives and exits with the client's exit
 * status. When there is none (first use, another build using it, disabled with KILN_WARM_CLIENT=0,
 * NODE_OPTIONS set, a command other than `build`, a command that names a descriptor of its own
 * process as /dev/fd/N) it execs `node kiln.js` as before.
 *
 * Protocol (one connection, one command; all integers little-endian u32):
 *   launcher -> client: "KZ01", payload length, then (with SCM_RIGHTS: fds 0, 1, 2) nothing more
 *                       in that message; then the payload: NUL-terminated strings: the script's
 *                       real path, cwd, umask in octal, argument count, the arguments after the
 *                       script, then every environment entry.
 *   client -> launcher: "R", its pid                (ready; nothing run yet)
 *   launcher -> client: "G"                          (go: from here the client owns the command)
 *   client -> launcher: "X", exit status             (at its exit)
 * Before "G" either side may give up: the launcher then execs Node itself, so a command runs
 * exactly once. After "G", an end of stream without "X" means the client died: the launcher
 * dies of the signal it forwarded last, or exits 1 with a message.
 *
 * Only a client of the same user is used: the socket dir must be the user's, mode 0700, and the
 * client checks the peer's uid (SO_PEERCRED). Sockets are named z-<fnv32 of the script's real
 * path>-<first 16 hex of the bundle's sha256>-<pid>.sock, so a client only ever runs the very
 * bundle and checkout the command names.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pwd.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/un.h>
#include <unistd.h>

extern char **environ;

#define MAX_PAYLOAD (4u << 20)

static char **g_argv;
static int g_argc;

/* `node SCRIPT ARGS...` in place of this process. */
static void run_node(int eligible) {
  char **args = calloc((size_t)g_argc + 1, sizeof *args);
  if (!args) {
    perror("kiln");
    exit(1);
  }
  args[0] = "node";
  for (int i = 1; i < g_argc; i++) args[i] = g_argv[i];
  /* Tells kiln.js to leave a warm client behind for the next command. */
  if (eligible) setenv("KILN_LAUNCH", "1", 1);
  execvp("node", args);
  fprintf(stderr, "kiln: cannot run node: %s\n", strerror(errno));
  exit(127);
}

static uint32_t fnv1a(const char *s) {
  uint32_t h = 2166136261u;
  for (; *s; s++) {
    h ^= (unsigned char)*s;
    h *= 16777619u;
  }
  return h;
}

/* A growable byte buffer for the payload. */
struct buf {
  char *p;
  size_t len, cap;
  int failed;
};

static void put(struct buf *b, const char *s) {
  size_t n = strlen(s) + 1;
  if (b->failed) return;
  if (b->len + n > MAX_PAYLOAD) {
    b->failed = 1;
    return;
  }
  if (b->len + n > b->cap) {
    size_t cap = b->cap ? b->cap * 2 : 8192;
    while (cap < b->len + n) cap *= 2;
    char *p = realloc(b->p, cap);
    if (!p) {
      b->failed = 1;
      return;
    }
    b->p = p;
    b->cap = cap;
  }
  memcpy(b->p + b->len, s, n);
  b->len += n;
}

/* All n bytes written (out) or read, whatever the partial transfers; -1 on error or end. */
static int xfer_all(int fd, void *p, size_t n, int out) {
  char *c = p;
  while (n) {
    ssize_t r = out ? write(fd, c, n) : read(fd, c, n);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) return -1;
    c += r;
    n -= (size_t)r;
  }
  return 0;
}

static void put_u32(unsigned char *p, uint32_t v) {
  p[0] = v & 0xff;
  p[1] = (v >> 8) & 0xff;
  p[2] = (v >> 16) & 0xff;
  p[3] = (v >> 24) & 0xff;
}

static uint32_t get_u32(const unsigned char *p) {
  return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}

static volatile sig_atomic_t g_pid;
static volatile sig_atomic_t g_last;

static void forward(int sig) {
  int saved = errno;
  if (g_pid > 0) kill((pid_t)g_pid, sig);
  if (sig != SIGWINCH && sig != SIGCONT) g_last = sig;
  errno = saved;
}

/* Ctrl-Z: the client stops with this process, and continues with it. */
static void stop(int sig) {
  int saved = errno;
  (void)sig;
  if (g_pid > 0) kill((pid_t)g_pid, SIGSTOP);
  signal(SIGTSTP, SIG_DFL);
  raise(SIGTSTP);
  /* Continued. */
  signal(SIGTSTP, stop);
  if (g_pid > 0) kill((pid_t)g_pid, SIGCONT);
  errno = saved;
}

/* After "G": the client owns the command; wait for its exit status. */
static void follow(int fd, pid_t pid) {
  static const int forwarded[] = {SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2, SIGWINCH};
  struct sigaction sa;
  struct timeval none = {0, 0};
  unsigned char x[5];
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = forward;
  sa.sa_flags = SA_RESTART;
  sigemptyset(&sa.sa_mask);
  g_pid = pid;
  for (size_t i = 0; i < sizeof forwarded / sizeof forwarded[0]; i++)
    sigaction(forwarded[i], &sa, NULL);
  signal(SIGTSTP, stop);
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &none, sizeof none);
  if (xfer_all(fd, x, sizeof x, 0) == 0 && x[0] == 'X') exit((int)(get_u32(x + 1) & 0xff));
  if (g_last) {
    int sig = g_last;
    signal(sig, SIG_DFL);
    raise(sig);
  }
  fprintf(stderr, "kiln: the warm client process (pid %d) ended without an exit status\n",
          (int)pid);
  exit(1);
}

/* One attempt on one socket: returns only when the client was not used (the caller moves on). */
static void try_client(const char *path, const struct buf *payload) {
  struct sockaddr_un sa;
  struct timeval tv = {5, 0};
  unsigned char head[8], ready[5];
  char cbuf[CMSG_SPACE(sizeof(int) * 3)];
  struct msghdr msg;
  struct iovec iov;
  struct cmsghdr *c;
  int fds[3] = {0, 1, 2};
  int fd;
  if (strlen(path) >= sizeof sa.sun_path) return;
  memset(&sa, 0, sizeof sa);
  sa.sun_family = AF_UNIX;
  strcpy(sa.sun_path, path);
  fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return;
  if (connect(fd, (struct sockaddr *)&sa, sizeof sa)) {
    /* Nobody listens: a client that died without removing its socket. */
    if (errno == ECONNREFUSED) unlink(path);
    close(fd);
    return;
  }
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
  memcpy(head, "KZ01", 4);
  put_u32(head + 4, (uint32_t)payload->len);
  memset(&msg, 0, sizeof msg);
  memset(cbuf, 0, sizeof cbuf);
  iov.iov_base = head;
  iov.iov_len = sizeof head;
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  msg.msg_control = cbuf;
  msg.msg_controllen = sizeof cbuf;
  c = CMSG_FIRSTHDR(&msg);
  c->cmsg_level = SOL_SOCKET;
  c->cmsg_type = SCM_RIGHTS;
  c->cmsg_len = CMSG_LEN(sizeof fds);
  memcpy(CMSG_DATA(c), fds, sizeof fds);
  ssize_t n;
  do n = sendmsg(fd, &msg, MSG_NOSIGNAL);
  while (n < 0 && errno == EINTR);
  if (n != (ssize_t)sizeof head || xfer_all(fd, payload->p, payload->len, 1) ||
      xfer_all(fd, ready, sizeof ready, 0) || ready[0] != 'R' ||
      send(fd, "G", 1, MSG_NOSIGNAL) != 1) {
    close(fd);
    return;
  }
  follow(fd, (pid_t)get_u32(ready + 1));
}

/* Whether the command names a descriptor of its process (`--secret id=x,src=<(cmd)` is
 * /dev/fd/63, `-f <(...)`, KILN_TOKEN_FILE=/dev/fd/3): only that process can open it (0, 1 and 2,
 * /dev/stdin and the like, are the same in a warm client: they are handed over). */
static int names_fd(const char *s) {
  static const char *const forms[] = {"/dev/fd/", "/proc/self/fd/", "/proc/thread-self/fd/"};
  for (size_t i = 0; i < sizeof forms / sizeof forms[0]; i++) {
    const char *p = s;
    while ((p = strstr(p, forms[i]))) {
      p += strlen(forms[i]);
      if (!(p[0] >= '0' && p[0] <= '2' && (p[1] < '0' || p[1] > '9'))) return 1;
    }
  }
  return 0;
}

/* `kiln-launch --serve SCRIPT`: a warm client (cli/src/warm-client.ts leaveWarmClient), started
 * with no descriptor but 0, 1, 2: it lives on, and must not keep open what its starter had. */
static void serve(const char *script) {
  char *args[] = {"node", (char *)script, NULL};
  for (int fd = 3; fd < 1024; fd++) close(fd);
  setenv("KILN_WARM_SERVE", "1", 1);
  execvp("node", args);
  _exit(127);
}

/* The user's cache dir for kiln, as cli/bin/kiln.js finds it. */
static int cache_dir(char *out, size_t n) {
  const char *k = getenv("KILN_CACHE_DIR"), *x = getenv("XDG_CACHE_HOME"), *home = getenv("HOME");
  int r;
  if (k && *k) r = snprintf(out, n, "%s", k);
  else if (x && *x) r = snprintf(out, n, "%s/kiln", x);
  else {
    if (!home || !*home) {
      struct passwd *pw = getpwuid(geteuid());
      home = pw ? pw->pw_dir : NULL;
    }
    if (!home) return -1;
    r = snprintf(out, n, "%s/.cache/kiln", home);
  }
  return r > 0 && (size_t)r < n ? 0 : -1;
}

int main(int argc, char **argv) {
  char script[PATH_MAX], dir[PATH_MAX], hashfile[PATH_MAX + 64], cwd[PATH_MAX], prefix[64];
  char hash[17], num[32], path[PATH_MAX + 300];
  const char *opts = getenv("NODE_OPTIONS"), *off = getenv("KILN_WARM_CLIENT");
  struct stat st;
  struct buf payload = {0};
  g_argc = argc;
  g_argv = argv;
  if (argc < 2) {
    fprintf(stderr, "usage: kiln-launch SCRIPT [ARGS...] | --serve SCRIPT\n");
    return 2;
  }
  if (argc == 3 && !strcmp(argv[1], "--serve")) serve(argv[2]);
  /* `build` only: other commands are short, or manage the local farm the client belongs near. */
  if (argc < 3 || strcmp(argv[2], "build") != 0 || (opts && *opts) || (off && !strcmp(off, "0")))
    run_node(0);
  for (int i = 2; i < argc; i++)
    if (names_fd(argv[i])) run_node(1);
  for (char **e = environ; *e; e++)
    if (names_fd(*e)) run_node(1);
  if (!realpath(argv[1], script) || !getcwd(cwd, sizeof cwd)) run_node(1);
  /* SCRIPT is cli/bin/kiln.js; the bundle's hash is in cli/dist/bundle/main.cjs.sha256. */
  snprintf(dir, sizeof dir, "%s", script);
  char *slash = strrchr(dir, '/');
  if (!slash) run_node(1);
  *slash = 0;
  snprintf(hashfile, sizeof hashfile, "%s/../dist/bundle/main.cjs.sha256", dir);
  int hf = open(hashfile, O_RDONLY | O_CLOEXEC);
  if (hf < 0) run_node(1);
  ssize_t got = read(hf, hash, 16);
  close(hf);
  if (got != 16) run_node(1);
  hash[16] = 0;
  if (cache_dir(dir, sizeof dir - 8)) run_node(1);
  strcat(dir, "/warm");
  if (lstat(dir, &st) || !S_ISDIR(st.st_mode) || st.st_uid != geteuid() || (st.st_mode & 077))
    run_node(1);
  snprintf(prefix, sizeof prefix, "z-%08x-%s-", fnv1a(script), hash);

  mode_t mask = umask(0);
  umask(mask);
  put(&payload, script);
  put(&payload, cwd);
  snprintf(num, sizeof num, "%o", (unsigned)mask);
  put(&payload, num);
  snprintf(num, sizeof num, "%d", argc - 2);
  put(&payload, num);
  for (int i = 2; i < argc; i++) put(&payload, argv[i]);
  for (char **e = environ; *e; e++) put(&payload, *e);
  if (payload.failed) run_node(1);

  DIR *d = opendir(dir);
  if (!d) run_node(1);
  struct dirent *e;
  size_t plen = strlen(prefix);
  while ((e = readdir(d))) {
    size_t len = strlen(e->d_name);
    if (strncmp(e->d_name, prefix, plen) || len < 5 || strcmp(e->d_name + len - 5, ".sock"))
      continue;
    snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
    try_client(path, &payload);
  }
  closedir(d);
  run_node(1);
}
