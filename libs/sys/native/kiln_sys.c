/*
 * kiln_sys: the Linux system calls the worker needs and Node does not offer (mount, umount2,
 * mknod, extended attributes), as a Node-API addon. Node-API's ABI is stable across Node
 * versions, so the headers of any Node >= 18 build it.
 *
 * Every function returns errno (0 on success) instead of throwing: the TypeScript wrapper
 * (src/index.ts) turns it into a Node-style error (code, errno, syscall, path). Calls that may
 * block on the filesystem (mount, umount2, the tree walk) run on libuv's thread pool and return a
 * promise; the others are synchronous and quick (one syscall on one inode).
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <spawn.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <poll.h>
#include <sys/mount.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/types.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <sys/xattr.h>
#include <unistd.h>
#include <node_api.h>

#ifndef NODE_GYP_MODULE_NAME
#define NODE_GYP_MODULE_NAME kiln_sys
#endif

#define CHECK(call)                                                                              \
  do {                                                                                           \
    if ((call) != napi_ok) {                                                                     \
      napi_throw_error(env, NULL, "kiln_sys: " #call " failed");                                 \
      return NULL;                                                                               \
    }                                                                                            \
  } while (0)

/* A JS string argument (or null/undefined -> NULL) as a malloc'd C string. */
static int get_string(napi_env env, napi_value v, char **out) {
  napi_valuetype t;
  size_t len = 0;
  *out = NULL;
  if (napi_typeof(env, v, &t) != napi_ok) return -1;
  if (t == napi_null || t == napi_undefined) return 0;
  if (t != napi_string) return -1;
  if (napi_get_value_string_utf8(env, v, NULL, 0, &len) != napi_ok) return -1;
  *out = malloc(len + 1);
  if (!*out) return -1;
  if (napi_get_value_string_utf8(env, v, *out, len + 1, &len) != napi_ok) {
    free(*out);
    *out = NULL;
    return -1;
  }
  return 0;
}

static napi_value int_value(napi_env env, int v) {
  napi_value r;
  napi_create_int32(env, v, &r);
  return r;
}

/* ---- async work: mount / umount2 ---- */

enum op_kind { OP_MOUNT, OP_UMOUNT };

struct op {
  enum op_kind kind;
  char *source, *target, *fstype, *data;
  unsigned long flags;
  int err;
  napi_async_work work;
  napi_deferred deferred;
};

static void op_free(struct op *o) {
  free(o->source);
  free(o->target);
  free(o->fstype);
  free(o->data);
  free(o);
}

static void op_execute(napi_env env, void *arg) {
  (void)env;
  struct op *o = arg;
  int r;
  if (o->kind == OP_MOUNT)
    r = mount(o->source, o->target, o->fstype, o->flags, o->data);
  else
    r = umount2(o->target, (int)o->flags);
  o->err = r == 0 ? 0 : errno;
}

static void op_complete(napi_env env, napi_status status, void *arg) {
  struct op *o = arg;
  int err = status == napi_ok ? o->err : EIO;
  napi_resolve_deferred(env, o->deferred, int_value(env, err));
  napi_delete_async_work(env, o->work);
  op_free(o);
}

static napi_value queue_op(napi_env env, struct op *o, const char *name) {
  napi_value promise, resource_name;
  if (napi_create_promise(env, &o->deferred, &promise) != napi_ok ||
      napi_create_string_utf8(env, name, NAPI_AUTO_LENGTH, &resource_name) != napi_ok ||
      napi_create_async_work(env, NULL, resource_name, op_execute, op_complete, o, &o->work) !=
          napi_ok ||
      napi_queue_async_work(env, o->work) != napi_ok) {
    op_free(o);
    napi_throw_error(env, NULL, "kiln_sys: cannot queue work");
    return NULL;
  }
  return promise;
}

/* mount(source, target, fstype, flags, data) -> Promise<errno> */
static napi_value js_mount(napi_env env, napi_callback_info info) {
  size_t argc = 5;
  napi_value argv[5];
  double flags = 0;
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  if (argc < 5) {
    napi_throw_type_error(env, NULL, "mount: 5 arguments");
    return NULL;
  }
  struct op *o = calloc(1, sizeof *o);
  if (!o) return NULL;
  o->kind = OP_MOUNT;
  if (get_string(env, argv[0], &o->source) || get_string(env, argv[1], &o->target) ||
      get_string(env, argv[2], &o->fstype) || get_string(env, argv[4], &o->data) ||
      napi_get_value_double(env, argv[3], &flags) != napi_ok || !o->target) {
    op_free(o);
    napi_throw_type_error(env, NULL, "mount: bad arguments");
    return NULL;
  }
  o->flags = (unsigned long)flags;
  return queue_op(env, o, "kiln_sys.mount");
}

/* umount2(target, flags) -> Promise<errno> */
static napi_value js_umount2(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2];
  int32_t flags = 0;
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  struct op *o = calloc(1, sizeof *o);
  if (!o) return NULL;
  o->kind = OP_UMOUNT;
  if (argc < 2 || get_string(env, argv[0], &o->target) || !o->target ||
      napi_get_value_int32(env, argv[1], &flags) != napi_ok) {
    op_free(o);
    napi_throw_type_error(env, NULL, "umount2: bad arguments");
    return NULL;
  }
  o->flags = (unsigned long)(uint32_t)flags;
  return queue_op(env, o, "kiln_sys.umount2");
}

/* ---- synchronous calls ---- */

/* mknod(path, mode, major, minor) -> errno */
static napi_value js_mknod(napi_env env, napi_callback_info info) {
  size_t argc = 4;
  napi_value argv[4];
  uint32_t mode = 0, maj = 0, min = 0;
  char *path = NULL;
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  if (argc < 4 || get_string(env, argv[0], &path) || !path ||
      napi_get_value_uint32(env, argv[1], &mode) != napi_ok ||
      napi_get_value_uint32(env, argv[2], &maj) != napi_ok ||
      napi_get_value_uint32(env, argv[3], &min) != napi_ok) {
    free(path);
    napi_throw_type_error(env, NULL, "mknod: bad arguments");
    return NULL;
  }
  int r = mknod(path, (mode_t)mode, makedev(maj, min));
  int err = r == 0 ? 0 : errno;
  free(path);
  return int_value(env, err);
}

/* lsetxattr(path, name, value: Buffer) -> errno */
static napi_value js_lsetxattr(napi_env env, napi_callback_info info) {
  size_t argc = 3;
  napi_value argv[3];
  char *path = NULL, *name = NULL;
  void *data = NULL;
  size_t len = 0;
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  if (argc < 3 || get_string(env, argv[0], &path) || get_string(env, argv[1], &name) || !path ||
      !name || napi_get_buffer_info(env, argv[2], &data, &len) != napi_ok) {
    free(path);
    free(name);
    napi_throw_type_error(env, NULL, "lsetxattr: bad arguments");
    return NULL;
  }
  int r = lsetxattr(path, name, len ? data : "", len, 0);
  int err = r == 0 ? 0 : errno;
  free(path);
  free(name);
  return int_value(env, err);
}

/* The attributes of one entry: llistxattr's list and each value (len -1: unreadable). */
struct attrs {
  char *names;      /* llistxattr's list */
  ssize_t names_len;
  char **values;    /* one per name */
  ssize_t *lens;
  int count;
};

static void attrs_free(struct attrs *a) {
  for (int i = 0; i < a->count; i++) free(a->values[i]);
  free(a->values);
  free(a->lens);
  free(a->names);
  memset(a, 0, sizeof *a);
}

/* Reads the attributes of `path` (symlinks not followed) into `a`: 0 or errno. */
static int read_attrs(const char *path, struct attrs *a) {
  memset(a, 0, sizeof *a);
  for (int tries = 0; tries < 4; tries++) {
    ssize_t n = llistxattr(path, NULL, 0);
    if (n < 0) return errno;
    if (n == 0) return 0;
    a->names = malloc((size_t)n);
    if (!a->names) return ENOMEM;
    a->names_len = llistxattr(path, a->names, (size_t)n);
    if (a->names_len >= 0) break;
    int e = errno;
    free(a->names);
    a->names = NULL;
    if (e != ERANGE) return e;
  }
  if (!a->names) return ERANGE;
  int count = 0;
  for (ssize_t i = 0; i < a->names_len; i += (ssize_t)strlen(a->names + i) + 1) count++;
  a->values = calloc((size_t)count, sizeof *a->values);
  a->lens = calloc((size_t)count, sizeof *a->lens);
  if (!a->values || !a->lens) return ENOMEM;
  a->count = count;
  int k = 0;
  for (ssize_t i = 0; i < a->names_len; i += (ssize_t)strlen(a->names + i) + 1, k++) {
    const char *name = a->names + i;
    ssize_t v = -1;
    for (int tries = 0; tries < 4; tries++) {
      v = lgetxattr(path, name, NULL, 0);
      if (v < 0) break;
      a->values[k] = malloc(v > 0 ? (size_t)v : 1);
      if (!a->values[k]) return ENOMEM;
      v = lgetxattr(path, name, a->values[k], (size_t)v);
      if (v >= 0 || errno != ERANGE) break;
      free(a->values[k]);
      a->values[k] = NULL;
    }
    /* An attribute removed meanwhile (ENODATA) or unreadable: left out (lens = -1). */
    a->lens[k] = v;
  }
  return 0;
}

/* [[name, Buffer], ...] of `a` (unreadable values left out). */
static napi_value attrs_value(napi_env env, const struct attrs *a) {
  napi_value arr;
  uint32_t j = 0;
  if (napi_create_array(env, &arr) != napi_ok) return NULL;
  int k = 0;
  for (ssize_t i = 0; i < a->names_len; i += (ssize_t)strlen(a->names + i) + 1, k++) {
    if (a->lens[k] < 0) continue;
    napi_value pair, name, buf;
    void *dst;
    if (napi_create_array_with_length(env, 2, &pair) != napi_ok ||
        napi_create_string_utf8(env, a->names + i, NAPI_AUTO_LENGTH, &name) != napi_ok ||
        napi_create_buffer_copy(env, (size_t)a->lens[k], a->values[k] ? a->values[k] : "", &dst,
                                &buf) != napi_ok)
      return NULL;
    napi_set_element(env, pair, 0, name);
    napi_set_element(env, pair, 1, buf);
    napi_set_element(env, arr, j++, pair);
  }
  return arr;
}

/* lxattrs(path) -> [[name, Buffer], ...] | errno */
static napi_value js_lxattrs(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  char *path = NULL;
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  if (argc < 1 || get_string(env, argv[0], &path) || !path) {
    free(path);
    napi_throw_type_error(env, NULL, "lxattrs: bad arguments");
    return NULL;
  }
  struct attrs a;
  int err = read_attrs(path, &a);
  free(path);
  napi_value r = err ? int_value(env, err) : attrs_value(env, &a);
  attrs_free(&a);
  return r;
}

/* ---- async tree walk: every entry's attributes ---- */

struct entry {
  char *rel;
  struct attrs attrs;
};

struct walk {
  char *root;
  struct entry *entries;
  size_t count, cap;
  int err;
  napi_async_work work;
  napi_deferred deferred;
};

static int walk_push(struct walk *w, const char *rel, struct attrs *a) {
  if (w->count == w->cap) {
    size_t cap = w->cap ? w->cap * 2 : 64;
    struct entry *e = realloc(w->entries, cap * sizeof *e);
    if (!e) return ENOMEM;
    w->entries = e;
    w->cap = cap;
  }
  w->entries[w->count].rel = strdup(rel);
  if (!w->entries[w->count].rel) return ENOMEM;
  w->entries[w->count].attrs = *a;
  w->count++;
  return 0;
}

/* Walks `abs` (a directory, not followed if a symlink), `rel` its path under the root. */
static int walk_dir(struct walk *w, char *abs, size_t abs_len, size_t cap, const char *rel_base) {
  DIR *d = opendir(abs);
  if (!d) return 0; /* unreadable: skipped, as getfattr and containerd do */
  struct dirent *de;
  int err = 0;
  while (!err && (de = readdir(d)) != NULL) {
    if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, "..")) continue;
    size_t n = strlen(de->d_name);
    if (abs_len + 1 + n + 1 > cap) continue; /* beyond PATH_MAX: cannot be named */
    abs[abs_len] = '/';
    memcpy(abs + abs_len + 1, de->d_name, n + 1);
    const char *rel = rel_base;
    struct attrs a;
    if (read_attrs(abs, &a) == 0 && a.names_len > 0) {
      err = walk_push(w, rel, &a);
      if (err) attrs_free(&a);
    } else {
      attrs_free(&a);
    }
    int is_dir = de->d_type == DT_DIR;
    if (de->d_type == DT_UNKNOWN) {
      struct stat st;
      is_dir = lstat(abs, &st) == 0 && S_ISDIR(st.st_mode);
    }
    if (!err && is_dir) err = walk_dir(w, abs, abs_len + 1 + n, cap, rel_base);
    abs[abs_len] = '\0';
  }
  closedir(d);
  return err;
}

static void walk_execute(napi_env env, void *arg) {
  (void)env;
  struct walk *w = arg;
  size_t cap = 4096 + 256;
  char *abs = malloc(cap);
  if (!abs) {
    w->err = ENOMEM;
    return;
  }
  size_t len = strlen(w->root);
  if (len + 1 > cap) {
    free(abs);
    w->err = ENAMETOOLONG;
    return;
  }
  memcpy(abs, w->root, len + 1);
  while (len > 1 && abs[len - 1] == '/') abs[--len] = '\0';
  struct stat st;
  if (lstat(abs, &st) != 0) {
    w->err = errno;
    free(abs);
    return;
  }
  struct attrs a;
  if (read_attrs(abs, &a) == 0 && a.names_len > 0) {
    w->err = walk_push(w, "", &a);
    if (w->err) attrs_free(&a);
  } else {
    attrs_free(&a);
  }
  /* Relative names start after "<root>/". */
  if (!w->err && S_ISDIR(st.st_mode)) w->err = walk_dir(w, abs, len, cap, abs + len + 1);
  free(abs);
}

static void walk_free(struct walk *w) {
  for (size_t i = 0; i < w->count; i++) {
    free(w->entries[i].rel);
    attrs_free(&w->entries[i].attrs);
  }
  free(w->entries);
  free(w->root);
  free(w);
}

static void walk_complete(napi_env env, napi_status status, void *arg) {
  struct walk *w = arg;
  napi_value result = NULL;
  if (status != napi_ok) w->err = EIO;
  if (w->err) {
    result = int_value(env, w->err);
  } else if (napi_create_array_with_length(env, w->count, &result) == napi_ok) {
    for (size_t i = 0; i < w->count; i++) {
      napi_value pair, rel, attrs = attrs_value(env, &w->entries[i].attrs);
      if (!attrs || napi_create_array_with_length(env, 2, &pair) != napi_ok ||
          napi_create_string_utf8(env, w->entries[i].rel, NAPI_AUTO_LENGTH, &rel) != napi_ok) {
        result = int_value(env, ENOMEM);
        break;
      }
      napi_set_element(env, pair, 0, rel);
      napi_set_element(env, pair, 1, attrs);
      napi_set_element(env, result, (uint32_t)i, pair);
    }
  } else {
    result = int_value(env, ENOMEM);
  }
  napi_resolve_deferred(env, w->deferred, result);
  napi_delete_async_work(env, w->work);
  walk_free(w);
}

/* treeXattrs(root) -> Promise<[[relPath, [[name, Buffer], ...]], ...] | errno> */
static napi_value js_tree_xattrs(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1], promise, resource_name;
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  struct walk *w = calloc(1, sizeof *w);
  if (!w) return NULL;
  if (argc < 1 || get_string(env, argv[0], &w->root) || !w->root) {
    walk_free(w);
    napi_throw_type_error(env, NULL, "treeXattrs: bad arguments");
    return NULL;
  }
  if (napi_create_promise(env, &w->deferred, &promise) != napi_ok ||
      napi_create_string_utf8(env, "kiln_sys.treeXattrs", NAPI_AUTO_LENGTH, &resource_name) !=
          napi_ok ||
      napi_create_async_work(env, NULL, resource_name, walk_execute, walk_complete, w,
                             &w->work) != napi_ok ||
      napi_queue_async_work(env, w->work) != napi_ok) {
    walk_free(w);
    napi_throw_error(env, NULL, "kiln_sys: cannot queue work");
    return NULL;
  }
  return promise;
}

/* ---- copyFiles: many small regular files copied in one thread-pool job ---- */

/*
 * Why: a COPY of a many-file context made, per file, an lstat, a copyFile and an lutimes (plus a
 * chown or chmod when needed) through libuv's thread pool, each a round trip to the event loop:
 * ~100 µs of overhead per file at best, milliseconds on a loaded machine. Here a batch of files is
 * copied by one job, each file with the syscalls it needs and nothing else.
 *
 * Per file: lstat the source; only a regular file with one link is copied here (anything else
 * answers COPY_OTHER and is left to the caller, as is a file with several links, whose copies
 * share an inode). It is opened with O_NOFOLLOW and checked to be the inode lstat saw; the
 * destination is created with O_EXCL | O_NOFOLLOW (never written through anything in the way:
 * EEXIST is answered and the caller decides); contents through copy_file_range (read/write where
 * the filesystems cannot); then fchown (when asked), fchmod (after chown, which clears set-id
 * bits), futimens. A destination that failed after its creation is removed.
 */
#define COPY_OTHER (-1)

struct copy_batch {
  char **src, **dst;
  int *result;
  uint32_t n;
  int chown; /* 1: fchown to uid/gid (-1: the source's) */
  int64_t uid, gid;
  int64_t mode; /* -1: the source's */
  int64_t sec, nsec; /* sec -1: the source's times */
  napi_async_work work;
  napi_deferred deferred;
};

static void copy_batch_free(struct copy_batch *b) {
  for (uint32_t i = 0; i < b->n; i++) {
    if (b->src) free(b->src[i]);
    if (b->dst) free(b->dst[i]);
  }
  free(b->src);
  free(b->dst);
  free(b->result);
  free(b);
}

static int copy_contents(int in, int out) {
  char buf[65536];
  for (;;) {
    ssize_t n = copy_file_range(in, NULL, out, NULL, 1 << 30, 0);
    if (n > 0) continue;
    if (n == 0) return 0;
    if (errno == EINTR) continue;
    if (errno != EXDEV && errno != ENOSYS && errno != EINVAL && errno != EOPNOTSUPP) return errno;
    break;
  }
  for (;;) {
    ssize_t n = read(in, buf, sizeof buf);
    if (n == 0) return 0;
    if (n < 0) {
      if (errno == EINTR) continue;
      return errno;
    }
    for (ssize_t off = 0; off < n;) {
      ssize_t w = write(out, buf + off, (size_t)(n - off));
      if (w < 0) {
        if (errno == EINTR) continue;
        return errno;
      }
      off += w;
    }
  }
}

static int copy_one(const struct copy_batch *b, const char *src, const char *dst) {
  struct stat ls, st;
  if (lstat(src, &ls) != 0) return errno;
  if (!S_ISREG(ls.st_mode) || ls.st_nlink != 1) return COPY_OTHER;
  int in = open(src, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC | O_NOCTTY);
  if (in < 0) return errno == ELOOP ? COPY_OTHER : errno;
  int err = 0;
  if (fstat(in, &st) != 0) {
    err = errno;
    close(in);
    return err;
  }
  if (st.st_dev != ls.st_dev || st.st_ino != ls.st_ino || !S_ISREG(st.st_mode)) {
    close(in);
    return COPY_OTHER;
  }
  int out = open(dst, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC | O_NOCTTY, 0600);
  if (out < 0) {
    err = errno;
    close(in);
    return err;
  }
  if (st.st_size > 0) err = copy_contents(in, out);
  if (!err && b->chown) {
    uid_t u = b->uid >= 0 ? (uid_t)b->uid : st.st_uid;
    gid_t g = b->gid >= 0 ? (gid_t)b->gid : st.st_gid;
    if (fchown(out, u, g) != 0) err = errno;
  }
  if (!err && fchmod(out, b->mode >= 0 ? (mode_t)b->mode : (st.st_mode & 07777)) != 0) err = errno;
  if (!err) {
    struct timespec ts[2];
    if (b->sec >= 0) {
      ts[0].tv_sec = ts[1].tv_sec = (time_t)b->sec;
      ts[0].tv_nsec = ts[1].tv_nsec = (long)b->nsec;
    } else {
      ts[0] = st.st_atim;
      ts[1] = st.st_mtim;
    }
    if (futimens(out, ts) != 0) err = errno;
  }
  if (close(out) != 0 && !err) err = errno;
  close(in);
  if (err) unlink(dst);
  return err;
}

static void copy_execute(napi_env env, void *arg) {
  (void)env;
  struct copy_batch *b = arg;
  for (uint32_t i = 0; i < b->n; i++) b->result[i] = copy_one(b, b->src[i], b->dst[i]);
}

static void copy_complete(napi_env env, napi_status status, void *arg) {
  struct copy_batch *b = arg;
  napi_value arr;
  if (status != napi_ok || napi_create_array_with_length(env, b->n, &arr) != napi_ok) {
    napi_resolve_deferred(env, b->deferred, int_value(env, EIO));
  } else {
    for (uint32_t i = 0; i < b->n; i++) napi_set_element(env, arr, i, int_value(env, b->result[i]));
    napi_resolve_deferred(env, b->deferred, arr);
  }
  napi_delete_async_work(env, b->work);
  copy_batch_free(b);
}

static int get_int64(napi_env env, napi_value arr, uint32_t i, int64_t *out) {
  napi_value v;
  return napi_get_element(env, arr, i, &v) != napi_ok ||
         napi_get_value_int64(env, v, out) != napi_ok;
}

/*
 * copyFiles(srcs, dsts, [chown, uid, gid, mode, sec, nsec]) -> Promise<(0 | errno | -1)[] | errno>
 * (-1: not a regular file with one link, left to the caller).
 */
static napi_value js_copy_files(napi_env env, napi_callback_info info) {
  size_t argc = 3;
  napi_value argv[3], promise, resource_name;
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  uint32_t n = 0, n2 = 0, no = 0;
  if (argc < 3 || napi_get_array_length(env, argv[0], &n) != napi_ok ||
      napi_get_array_length(env, argv[1], &n2) != napi_ok || n != n2 ||
      napi_get_array_length(env, argv[2], &no) != napi_ok || no != 6) {
    napi_throw_type_error(env, NULL, "copyFiles: bad arguments");
    return NULL;
  }
  struct copy_batch *b = calloc(1, sizeof *b);
  if (!b) return NULL;
  b->n = n;
  b->src = calloc(n ? n : 1, sizeof *b->src);
  b->dst = calloc(n ? n : 1, sizeof *b->dst);
  b->result = calloc(n ? n : 1, sizeof *b->result);
  int64_t o[6];
  int bad = !b->src || !b->dst || !b->result;
  for (uint32_t i = 0; !bad && i < 6; i++) bad = get_int64(env, argv[2], i, &o[i]);
  for (uint32_t i = 0; !bad && i < n; i++) {
    napi_value s, d;
    bad = napi_get_element(env, argv[0], i, &s) != napi_ok ||
          napi_get_element(env, argv[1], i, &d) != napi_ok || get_string(env, s, &b->src[i]) ||
          get_string(env, d, &b->dst[i]) || !b->src[i] || !b->dst[i];
  }
  if (bad) {
    copy_batch_free(b);
    napi_throw_type_error(env, NULL, "copyFiles: bad arguments");
    return NULL;
  }
  b->chown = o[0] != 0;
  b->uid = o[1];
  b->gid = o[2];
  b->mode = o[3];
  b->sec = o[4];
  b->nsec = o[5];
  if (napi_create_promise(env, &b->deferred, &promise) != napi_ok ||
      napi_create_string_utf8(env, "kiln_sys.copyFiles", NAPI_AUTO_LENGTH, &resource_name) !=
          napi_ok ||
      napi_create_async_work(env, NULL, resource_name, copy_execute, copy_complete, b,
                             &b->work) != napi_ok ||
      napi_queue_async_work(env, b->work) != napi_ok) {
    copy_batch_free(b);
    napi_throw_error(env, NULL, "kiln_sys: cannot queue work");
    return NULL;
  }
  return promise;
}

/* ---- lstatDir: one directory's entries and their lstat, in one call ---- */

/*
 * Why: the client lists a build context on every build (a new process each time): per entry, a
 * readdir name, an lstatSync making a BigIntStats (and its Date objects), and the fields read
 * back. For 5,000 files that was ~100 ms of a fully cached build's ~400. Here one call per
 * directory does readdir, sorts the names (bytewise, as Go's filepath.Walk and so fsutil) and
 * fstatat(AT_SYMLINK_NOFOLLOW)s each, reading symlinks' targets, and hands back four values: the
 * names, each entry's stamp text (`size\tmtime_ns\tctime_ns\tino`, what the client's digest cache
 * compares), the symlinks' targets (each NUL-terminated, in order), and six numbers per entry
 * (mode, uid, gid, size, mtime in ns as its low and high 32 bits).
 */
struct dir_names {
  char **v;
  size_t n, cap;
};

static int cmp_names(const void *a, const void *b) {
  return strcmp(*(char *const *)a, *(char *const *)b);
}

static void dir_names_free(struct dir_names *d) {
  for (size_t i = 0; i < d->n; i++) free(d->v[i]);
  free(d->v);
}

/* Appends `len` bytes of `s` and a NUL to the growing buffer `*buf`. */
static int buf_put(char **buf, size_t *len, size_t *cap, const char *s, size_t n) {
  if (*len + n + 1 > *cap) {
    size_t c = *cap ? *cap : 4096;
    while (*len + n + 1 > c) c *= 2;
    char *b = realloc(*buf, c);
    if (!b) return ENOMEM;
    *buf = b;
    *cap = c;
  }
  memcpy(*buf + *len, s, n);
  (*buf)[*len + n] = '\0';
  *len += n + 1;
  return 0;
}

/*
 * lstatDir(path) -> [names, stamps, links, Float64Array] | errno | [errno, name]
 * names, stamps: one NUL-terminated string per entry; links: one per symlink.
 */
static napi_value js_lstat_dir(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1], result;
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  char *path = NULL;
  if (argc < 1 || get_string(env, argv[0], &path) || !path) {
    free(path);
    napi_throw_type_error(env, NULL, "lstatDir: bad arguments");
    return NULL;
  }
  int fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  free(path);
  if (fd < 0) return int_value(env, errno);
  DIR *d = fdopendir(fd);
  if (!d) {
    int e = errno;
    close(fd);
    return int_value(env, e);
  }
  struct dir_names names = {0};
  int err = 0;
  struct dirent *de;
  errno = 0;
  while ((de = readdir(d)) != NULL) {
    if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, "..")) continue;
    if (names.n == names.cap) {
      size_t c = names.cap ? names.cap * 2 : 64;
      char **v = realloc(names.v, c * sizeof *v);
      if (!v) {
        err = ENOMEM;
        break;
      }
      names.v = v;
      names.cap = c;
    }
    if (!(names.v[names.n] = strdup(de->d_name))) {
      err = ENOMEM;
      break;
    }
    names.n++;
    errno = 0;
  }
  if (!err && errno) err = errno;
  if (err) {
    closedir(d);
    dir_names_free(&names);
    return int_value(env, err);
  }
  qsort(names.v, names.n, sizeof *names.v, cmp_names);

  char *nb = NULL, *sb = NULL, *lb = NULL;
  size_t nl = 0, nc = 0, sl = 0, sc = 0, ll = 0, lc = 0;
  double *nums = NULL;
  napi_value arraybuf = NULL;
  void *data = NULL;
  size_t failed = (size_t)-1;
  if (napi_create_arraybuffer(env, (names.n ? names.n : 1) * 6 * sizeof(double), &data,
                              &arraybuf) != napi_ok)
    err = ENOMEM;
  nums = data;
  char stamp[96], target[4097];
  for (size_t i = 0; !err && i < names.n; i++) {
    struct stat st;
    if (fstatat(dirfd(d), names.v[i], &st, AT_SYMLINK_NOFOLLOW) != 0) {
      err = errno;
      failed = i;
      break;
    }
    int64_t mt = (int64_t)st.st_mtim.tv_sec * 1000000000 + st.st_mtim.tv_nsec;
    int64_t ct = (int64_t)st.st_ctim.tv_sec * 1000000000 + st.st_ctim.tv_nsec;
    int n = snprintf(stamp, sizeof stamp, "%lld\t%lld\t%lld\t%llu", (long long)st.st_size,
                     (long long)mt, (long long)ct, (unsigned long long)st.st_ino);
    double *o = nums + i * 6;
    o[0] = st.st_mode;
    o[1] = st.st_uid;
    o[2] = st.st_gid;
    o[3] = (double)st.st_size;
    o[4] = (double)(uint32_t)((uint64_t)mt & 0xffffffffu);
    o[5] = (double)(int32_t)(uint32_t)((uint64_t)mt >> 32);
    err = buf_put(&nb, &nl, &nc, names.v[i], strlen(names.v[i])) ||
          buf_put(&sb, &sl, &sc, stamp, (size_t)n);
    if (!err && S_ISLNK(st.st_mode)) {
      ssize_t tl = readlinkat(dirfd(d), names.v[i], target, sizeof target - 1);
      if (tl < 0) {
        err = errno;
        failed = i;
        break;
      }
      err = buf_put(&lb, &ll, &lc, target, (size_t)tl);
    }
    if (err) err = ENOMEM;
  }
  closedir(d);
  napi_value a, b, c, typed;
  if (err) {
    result = int_value(env, err);
    if (failed != (size_t)-1 && napi_create_array_with_length(env, 2, &result) == napi_ok &&
        napi_create_string_utf8(env, names.v[failed], NAPI_AUTO_LENGTH, &a) == napi_ok) {
      napi_set_element(env, result, 0, int_value(env, err));
      napi_set_element(env, result, 1, a);
    }
  } else if (napi_create_string_utf8(env, nb ? nb : "", nl, &a) != napi_ok ||
             napi_create_string_utf8(env, sb ? sb : "", sl, &b) != napi_ok ||
             napi_create_string_utf8(env, lb ? lb : "", ll, &c) != napi_ok ||
             napi_create_typedarray(env, napi_float64_array, names.n * 6, arraybuf, 0, &typed) !=
                 napi_ok ||
             napi_create_array_with_length(env, 4, &result) != napi_ok) {
    result = int_value(env, ENOMEM);
  } else {
    napi_set_element(env, result, 0, a);
    napi_set_element(env, result, 1, b);
    napi_set_element(env, result, 2, c);
    napi_set_element(env, result, 3, typed);
  }
  free(nb);
  free(sb);
  free(lb);
  dir_names_free(&names);
  return result;
}

/* ---- spawn: posix_spawn (vfork) instead of libuv's fork ---- */

/*
 * Why: libuv forks, and a fork of a large process (the worker, ~300 MB) copies its page tables
 * and blocks the event loop until the child has exec'd, ~15-25 ms on these machines per
 * container start. glibc's posix_spawn clones with CLONE_VM|CLONE_VFORK: no copy, and the caller
 * waits only for the exec. That wait (1-4 ms, longer on a busy machine: the child must be
 * scheduled and exec) is a thread's of its own, not the event loop's: the thread spawns, reports
 * the pid, waits for the exit (waitpid on this one pid, so libuv's SIGCHLD handling, which waits
 * for its own pids only, never reaps it) and reports it, through a thread-safe function.
 */
struct child {
  char *file, **args, **envp;
  int out_w, err_w; /* the child's ends of the pipes, closed by the thread once spawned */
  napi_threadsafe_function tsfn;
};

/* One report to JS: kind 0 started (a = pid), 1 failed to start (a = errno), 2 exited (a = code
 * or -1, b = signal). */
struct child_event {
  int kind, a, b;
};

static void child_call_js(napi_env env, napi_value cb, void *context, void *data) {
  (void)context;
  struct child_event *e = data;
  if (env != NULL && cb != NULL) {
    napi_value undefined, argv[3];
    napi_get_undefined(env, &undefined);
    argv[0] = int_value(env, e->kind);
    argv[1] = int_value(env, e->a);
    argv[2] = int_value(env, e->b);
    napi_call_function(env, undefined, cb, 3, argv, NULL);
  }
  free(e);
}

static void child_report(struct child *c, int kind, int a, int b) {
  struct child_event *e = malloc(sizeof *e);
  if (!e) return; /* out of memory: the report is lost (closed never settles) */
  e->kind = kind;
  e->a = a;
  e->b = b;
  napi_call_threadsafe_function(c->tsfn, e, napi_tsfn_blocking);
}

/* A JS array of strings as a NULL-terminated, malloc'd vector (NULL on error). */
static char **get_string_array(napi_env env, napi_value arr) {
  uint32_t n = 0;
  bool is_array = false;
  if (napi_is_array(env, arr, &is_array) != napi_ok || !is_array) return NULL;
  if (napi_get_array_length(env, arr, &n) != napi_ok) return NULL;
  char **v = calloc(n + 1, sizeof *v);
  if (!v) return NULL;
  for (uint32_t i = 0; i < n; i++) {
    napi_value e;
    if (napi_get_element(env, arr, i, &e) != napi_ok || get_string(env, e, &v[i]) || !v[i]) {
      for (uint32_t j = 0; j < i; j++) free(v[j]);
      free(v);
      return NULL;
    }
  }
  return v;
}

static void free_string_array(char **v) {
  if (!v) return;
  for (char **p = v; *p; p++) free(*p);
  free(v);
}

static void child_free(struct child *c) {
  if (c->out_w >= 0) close(c->out_w);
  if (c->err_w >= 0) close(c->err_w);
  free(c->file);
  free_string_array(c->args);
  free_string_array(c->envp);
  free(c);
}

/* posix_spawn of c->file; 0 and *pid, or an errno. */
static int child_spawn(struct child *c, pid_t *pid) {
  posix_spawn_file_actions_t fa;
  posix_spawnattr_t attr;
  int rc;
  if ((rc = posix_spawn_file_actions_init(&fa))) return rc;
  if ((rc = posix_spawnattr_init(&attr))) {
    posix_spawn_file_actions_destroy(&fa);
    return rc;
  }
  sigset_t all, none;
  /* Every signal, glibc's internal ones (32, 33) included: sigfillset leaves them out, and
   * posix_spawn then sets them to SIG_IGN in the child, which an exec keeps (containers would
   * start with them ignored, unlike libuv's children). */
  memset(&all, 0xff, sizeof all);
  sigemptyset(&none);
  if (!(rc = posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0)) &&
      !(rc = posix_spawn_file_actions_adddup2(&fa, c->out_w, 1)) &&
      !(rc = posix_spawn_file_actions_adddup2(&fa, c->err_w, 2)) &&
      !(rc = posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSID | POSIX_SPAWN_SETSIGDEF |
                                                   POSIX_SPAWN_SETSIGMASK)) &&
      !(rc = posix_spawnattr_setsigdefault(&attr, &all)) &&
      !(rc = posix_spawnattr_setsigmask(&attr, &none)))
    rc = posix_spawn(pid, c->file, &fa, &attr, c->args, c->envp);
  posix_spawn_file_actions_destroy(&fa);
  posix_spawnattr_destroy(&attr);
  return rc;
}

static void *child_run(void *arg) {
  struct child *c = arg;
  napi_threadsafe_function tsfn = c->tsfn;
  pid_t pid;
  int rc = child_spawn(c, &pid);
  if (rc) {
    child_report(c, 1, rc, 0);
  } else {
    int status = 0;
    pid_t r;
    child_report(c, 0, pid, 0);
    /* The parent's copies of the write ends: the reader sees the end once the child's go. */
    close(c->out_w);
    close(c->err_w);
    c->out_w = c->err_w = -1;
    do r = waitpid(pid, &status, 0);
    while (r == -1 && errno == EINTR);
    if (r == -1) status = 0x7f00; /* reported as exit 127 */
    child_report(c, 2, WIFEXITED(status) ? WEXITSTATUS(status) : -1,
                 WIFSIGNALED(status) ? WTERMSIG(status) : 0);
  }
  child_free(c);
  napi_release_threadsafe_function(tsfn, napi_tsfn_release);
  return NULL;
}

/*
 * spawn(path, argv, envp, onEvent) -> [stdoutFd, stderrFd] | errno
 * `path` is the program's path (no PATH search). The child: stdin /dev/null, stdout and stderr
 * pipes (the parent gets the read ends, close-on-exec), a session of its own (setsid), default
 * signal dispositions and an empty signal mask (as libuv gives its children). It is started on a
 * thread: onEvent(0, pid) once it runs, or onEvent(1, errno) when it cannot start; then
 * onEvent(2, code, signal) once it exited (code -1 when killed by signal).
 */
static napi_value js_spawn(napi_env env, napi_callback_info info) {
  size_t argc = 4;
  napi_value argv[4], result, resource_name;
  int out[2] = {-1, -1}, err[2] = {-1, -1}, rc = 0;
  struct child *c = NULL;
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  c = calloc(1, sizeof *c);
  if (!c) return int_value(env, ENOMEM);
  c->out_w = c->err_w = -1;
  if (argc < 4 || get_string(env, argv[0], &c->file) || !c->file ||
      !(c->args = get_string_array(env, argv[1])) || !(c->envp = get_string_array(env, argv[2]))) {
    child_free(c);
    napi_throw_type_error(env, NULL, "spawn: bad arguments");
    return NULL;
  }
  if (napi_create_string_utf8(env, "kiln_sys.spawn", NAPI_AUTO_LENGTH, &resource_name) !=
          napi_ok ||
      napi_create_threadsafe_function(env, argv[3], NULL, resource_name, 0, 1, NULL, NULL, NULL,
                                      child_call_js, &c->tsfn) != napi_ok) {
    child_free(c);
    return int_value(env, EINVAL);
  }
  if (pipe2(out, O_CLOEXEC)) {
    rc = errno;
    goto fail;
  }
  c->out_w = out[1];
  if (pipe2(err, O_CLOEXEC)) {
    rc = errno;
    goto fail;
  }
  c->err_w = err[1];
  pthread_t t;
  pthread_attr_t ta;
  pthread_attr_init(&ta);
  pthread_attr_setdetachstate(&ta, PTHREAD_CREATE_DETACHED);
  pthread_attr_setstacksize(&ta, 64 * 1024);
  rc = pthread_create(&t, &ta, child_run, c);
  pthread_attr_destroy(&ta);
  if (rc) goto fail;
  CHECK(napi_create_array_with_length(env, 2, &result));
  CHECK(napi_set_element(env, result, 0, int_value(env, out[0])));
  CHECK(napi_set_element(env, result, 1, int_value(env, err[0])));
  return result;
fail:
  if (out[0] >= 0) close(out[0]);
  if (err[0] >= 0) close(err[0]);
  napi_release_threadsafe_function(c->tsfn, napi_tsfn_abort);
  child_free(c);
  return int_value(env, rc);
}

/* ---- unix sockets with descriptor passing (the CLI's pre-warmed client, cli/src/zygote.ts) ---- */

/* unixListen(path, backlog) -> [fd] | errno. A SOCK_STREAM socket bound to `path` and listening;
 * close-on-exec. The path's directory gives its protection (the socket's mode follows umask). */
static napi_value js_unix_listen(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2], result;
  char *path = NULL;
  int32_t backlog = 1;
  struct sockaddr_un sa;
  int fd = -1, err = 0;
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  if (argc < 2 || get_string(env, argv[0], &path) || !path ||
      napi_get_value_int32(env, argv[1], &backlog) != napi_ok) {
    free(path);
    napi_throw_type_error(env, NULL, "unixListen: bad arguments");
    return NULL;
  }
  memset(&sa, 0, sizeof sa);
  sa.sun_family = AF_UNIX;
  if (strlen(path) >= sizeof sa.sun_path) {
    free(path);
    return int_value(env, ENAMETOOLONG);
  }
  strcpy(sa.sun_path, path);
  free(path);
  fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return int_value(env, errno);
  if (bind(fd, (struct sockaddr *)&sa, sizeof sa) || listen(fd, backlog)) {
    err = errno;
    close(fd);
    return int_value(env, err);
  }
  CHECK(napi_create_array_with_length(env, 1, &result));
  CHECK(napi_set_element(env, result, 0, int_value(env, fd)));
  return result;
}

/* unixAccept(fd, timeoutMs, ioTimeoutMs) -> [conn, uid, pid] | errno | null (no connection in
 * timeoutMs). Blocks the calling thread (for a process with nothing else to do). The connection
 * is close-on-exec, blocking, with SO_RCVTIMEO/SO_SNDTIMEO of ioTimeoutMs: a peer that stops
 * talking cannot hold the caller; uid and pid are the peer's credentials (SO_PEERCRED). */
static napi_value js_unix_accept(napi_env env, napi_callback_info info) {
  size_t argc = 3;
  napi_value argv[3], result, nul;
  int32_t fd = -1, timeout = 0, io = 0;
  struct pollfd p;
  struct ucred cred;
  socklen_t len = sizeof cred;
  struct timeval tv;
  int conn, r, err;
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  if (argc < 3 || napi_get_value_int32(env, argv[0], &fd) != napi_ok ||
      napi_get_value_int32(env, argv[1], &timeout) != napi_ok ||
      napi_get_value_int32(env, argv[2], &io) != napi_ok) {
    napi_throw_type_error(env, NULL, "unixAccept: bad arguments");
    return NULL;
  }
  p.fd = fd;
  p.events = POLLIN;
  do r = poll(&p, 1, timeout);
  while (r < 0 && errno == EINTR);
  if (r < 0) return int_value(env, errno);
  if (r == 0) {
    CHECK(napi_get_null(env, &nul));
    return nul;
  }
  conn = accept4(fd, NULL, NULL, SOCK_CLOEXEC);
  if (conn < 0) return int_value(env, errno);
  tv.tv_sec = io / 1000;
  tv.tv_usec = (io % 1000) * 1000;
  if (getsockopt(conn, SOL_SOCKET, SO_PEERCRED, &cred, &len) ||
      setsockopt(conn, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv) ||
      setsockopt(conn, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv)) {
    err = errno;
    close(conn);
    return int_value(env, err);
  }
  CHECK(napi_create_array_with_length(env, 3, &result));
  CHECK(napi_set_element(env, result, 0, int_value(env, conn)));
  CHECK(napi_set_element(env, result, 1, int_value(env, (int)cred.uid)));
  CHECK(napi_set_element(env, result, 2, int_value(env, (int)cred.pid)));
  return result;
}

#define MAX_PASSED_FDS 16

/* recvFds(fd, maxBytes, maxFds) -> [Buffer, fds] | errno. One recvmsg(2): up to maxBytes of data
 * and up to maxFds descriptors (SCM_RIGHTS, close-on-exec). Descriptors beyond maxFds, or sent
 * with a truncated control message, are closed and the call fails with EMSGSIZE. */
static napi_value js_recv_fds(napi_env env, napi_callback_info info) {
  size_t argc = 3;
  napi_value argv[3], result, buf, fds;
  int32_t fd = -1, max_bytes = 0, max_fds = 0;
  char cbuf[CMSG_SPACE(sizeof(int) * MAX_PASSED_FDS)];
  struct msghdr msg;
  struct iovec iov;
  struct cmsghdr *c;
  void *data = NULL;
  ssize_t n;
  int got[MAX_PASSED_FDS], ngot = 0, bad = 0;
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  if (argc < 3 || napi_get_value_int32(env, argv[0], &fd) != napi_ok ||
      napi_get_value_int32(env, argv[1], &max_bytes) != napi_ok ||
      napi_get_value_int32(env, argv[2], &max_fds) != napi_ok || max_bytes <= 0 ||
      max_bytes > (1 << 20) || max_fds < 0 || max_fds > MAX_PASSED_FDS) {
    napi_throw_type_error(env, NULL, "recvFds: bad arguments");
    return NULL;
  }
  data = malloc((size_t)max_bytes);
  if (!data) return int_value(env, ENOMEM);
  memset(&msg, 0, sizeof msg);
  iov.iov_base = data;
  iov.iov_len = (size_t)max_bytes;
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  msg.msg_control = cbuf;
  msg.msg_controllen = sizeof cbuf;
  do n = recvmsg(fd, &msg, MSG_CMSG_CLOEXEC);
  while (n < 0 && errno == EINTR);
  if (n < 0) {
    int err = errno;
    free(data);
    return int_value(env, err);
  }
  for (c = CMSG_FIRSTHDR(&msg); c; c = CMSG_NXTHDR(&msg, c)) {
    if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
    int k = (int)((c->cmsg_len - CMSG_LEN(0)) / sizeof(int));
    int *p = (int *)CMSG_DATA(c);
    for (int i = 0; i < k; i++) {
      if (ngot < max_fds) got[ngot++] = p[i];
      else {
        close(p[i]);
        bad = 1;
      }
    }
  }
  if (bad || (msg.msg_flags & MSG_CTRUNC)) {
    for (int i = 0; i < ngot; i++) close(got[i]);
    free(data);
    return int_value(env, EMSGSIZE);
  }
  if (napi_create_buffer_copy(env, (size_t)n, data, NULL, &buf) != napi_ok) {
    for (int i = 0; i < ngot; i++) close(got[i]);
    free(data);
    napi_throw_error(env, NULL, "kiln_sys: cannot allocate a buffer");
    return NULL;
  }
  free(data);
  CHECK(napi_create_array_with_length(env, (size_t)ngot, &fds));
  for (int i = 0; i < ngot; i++) CHECK(napi_set_element(env, fds, (uint32_t)i, int_value(env, got[i])));
  CHECK(napi_create_array_with_length(env, 2, &result));
  CHECK(napi_set_element(env, result, 0, buf));
  CHECK(napi_set_element(env, result, 1, fds));
  return result;
}

/* dup2(oldfd, newfd) -> errno. newfd is not close-on-exec (as dup2(2)). */
static napi_value js_dup2(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2];
  int32_t a = -1, b = -1;
  int r;
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  if (argc < 2 || napi_get_value_int32(env, argv[0], &a) != napi_ok ||
      napi_get_value_int32(env, argv[1], &b) != napi_ok) {
    napi_throw_type_error(env, NULL, "dup2: bad arguments");
    return NULL;
  }
  do r = dup2(a, b);
  while (r < 0 && errno == EINTR);
  return int_value(env, r < 0 ? errno : 0);
}

static napi_value init(napi_env env, napi_value exports) {
  napi_property_descriptor props[] = {
      {"mount", NULL, js_mount, NULL, NULL, NULL, napi_enumerable, NULL},
      {"umount2", NULL, js_umount2, NULL, NULL, NULL, napi_enumerable, NULL},
      {"mknod", NULL, js_mknod, NULL, NULL, NULL, napi_enumerable, NULL},
      {"lsetxattr", NULL, js_lsetxattr, NULL, NULL, NULL, napi_enumerable, NULL},
      {"lxattrs", NULL, js_lxattrs, NULL, NULL, NULL, napi_enumerable, NULL},
      {"treeXattrs", NULL, js_tree_xattrs, NULL, NULL, NULL, napi_enumerable, NULL},
      {"spawn", NULL, js_spawn, NULL, NULL, NULL, napi_enumerable, NULL},
      {"copyFiles", NULL, js_copy_files, NULL, NULL, NULL, napi_enumerable, NULL},
      {"unixListen", NULL, js_unix_listen, NULL, NULL, NULL, napi_enumerable, NULL},
      {"unixAccept", NULL, js_unix_accept, NULL, NULL, NULL, napi_enumerable, NULL},
      {"recvFds", NULL, js_recv_fds, NULL, NULL, NULL, napi_enumerable, NULL},
      {"dup2", NULL, js_dup2, NULL, NULL, NULL, napi_enumerable, NULL},
      {"lstatDir", NULL, js_lstat_dir, NULL, NULL, NULL, napi_enumerable, NULL},
  };
  if (napi_define_properties(env, exports, sizeof props / sizeof props[0], props) != napi_ok)
    return NULL;
  return exports;
}

NAPI_MODULE(NODE_GYP_MODULE_NAME, init)
