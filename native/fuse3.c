/* blobdisk's FUSE binding: a small N-API addon over libfuse 3 (Debian's libfuse3).
 *
 * libfuse's multi-threaded session loop runs on its own threads. Each operation fills a
 * request on the calling libfuse thread's stack, hands it to JavaScript through one
 * threadsafe function and waits on the request's semaphore; JavaScript answers through
 * reply(), which copies the answer into libfuse's structures and wakes the thread. Read and
 * write buffers are handed to JavaScript without a copy and detached on reply, so a late
 * use from JavaScript cannot touch memory libfuse has reused. Only the operations
 * lib/fuse/ops.ts serves are registered, plus fallocate. */

#define FUSE_USE_VERSION 35
#define NAPI_VERSION 8
#define _GNU_SOURCE

#include <errno.h>
#include <pthread.h>
#include <semaphore.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <fuse3/fuse.h>
#include <node_api.h>

enum op {
  OP_INIT, OP_GETATTR, OP_FGETATTR, OP_READDIR, OP_OPEN, OP_CREATE, OP_READ, OP_WRITE,
  OP_FLUSH, OP_FSYNC, OP_RELEASE, OP_TRUNCATE, OP_FTRUNCATE, OP_UNLINK, OP_MKDIR, OP_RMDIR,
  OP_RENAME, OP_CHMOD, OP_CHOWN, OP_UTIMENS, OP_STATFS, OP_FALLOCATE,
  OP_LOOP_ENDED, /* not a FUSE operation: the session loop returned */
  OP_KICK        /* not a FUSE operation: the fast path served requests JavaScript has not seen */
};

/* The fast path. JavaScript publishes grains whose file it holds open: whole, checked
 * grains for reading, grains a whole-sector write may land in for writing. A read or write
 * of the kernel that touches only published grains of an image bound to its handle is
 * served here, on the libfuse thread, with pread/pwrite on the grain file; everything else
 * goes to JavaScript. What was served is journaled (kind, image, offset, length) before it
 * is answered, in a file of the cache directory mapped into memory, so a served write is
 * known also after the process is killed (its bytes are in the page cache too), and
 * JavaScript takes the journal (drain) to bring its grain states up to date, then lets the
 * records go (ack) once the grain map has them: it does so
 * before it relies on them (fsync, upload, eviction, a lock), and when kicked after the
 * journal's first record. A revoke takes the table's write lock, so when it returns no
 * served request of the grain is under way and every one before is in the journal. */
enum { FAST_READ = 1, FAST_WRITE = 2 };
enum { REC_READ = 1, REC_WRITE = 2 };
#define FAST_BUCKETS 4096
#define JOURNAL_RECORDS 65536 /* 2 MiB */
#define SECTOR 512

typedef struct grain_node {
  uint32_t image;
  int64_t idx;
  int fd;
  int flags;
  /* Sectors that hold the grain's bytes, a bit each from the lowest (NULL: all of them);
   * served writes set theirs. */
  uint8_t *valid;
  size_t valid_len;
  struct grain_node *next;
} grain_node_t;

typedef struct bound {
  uint64_t fh;
  uint32_t image;
  int64_t last_end; /* where the last read served here on this handle ended */
} bound_t;

/* The journal file: a ring of records, each 4 numbers (kind, image, offset, length). head
 * and tail only grow; a record is written before tail moves past it, so one cut short by a
 * kill is never counted. */
#define JOURNAL_MAGIC 0x6a6e7262646b3031ull /* "blbdkj01" */
typedef struct journal_file {
  uint64_t magic;
  uint64_t capacity;
  uint64_t head;
  uint64_t tail;
  double records[];
} journal_file_t;

typedef struct fast {
  pthread_rwlock_t lock; /* the grains and bound handles */
  uint64_t grain_size;
  grain_node_t *buckets[FAST_BUCKETS];
  bound_t *bound;
  size_t nbound, capbound;
  pthread_mutex_t jlock; /* the journal */
  journal_file_t *jf;    /* mapped; records [head, tail) not yet acknowledged */
  uint64_t taken;        /* records before this were handed to JavaScript by drain */
  size_t reserved;
  int kick_pending;
  double reads, writes; /* served here, in all */
} fast_t;

typedef struct session {
  struct fuse *fuse;
  napi_threadsafe_function tsfn;
  pthread_t thread;
  int thread_started;
  int loop_result;
  int writeback;
  unsigned max_request;
  int unmounted;
  int joined;
  fast_t *fast; /* NULL: every request goes to JavaScript */
} session_t;

typedef struct request {
  int op;
  const char *path;
  const char *path2;
  char *buf;
  size_t len;
  int64_t offset;
  int64_t length;
  int64_t mode;
  int64_t uid, gid;
  uint64_t fh;
  double atime_ms, mtime_ms;
  struct stat *st;
  struct statvfs *sv;
  /* readdir answer: NUL-separated names, malloc'd by reply(), filled in by the caller */
  char *names;
  size_t names_len;
  int res;
  uint64_t out_fh;
  sem_t done;
} request_t;

#define CHECK(env, call)                                                             \
  do {                                                                               \
    if ((call) != napi_ok) {                                                         \
      napi_throw_error((env), NULL, "fuse3 binding: " #call " failed");             \
      return NULL;                                                                   \
    }                                                                                \
  } while (0)

/* ---- libfuse threads ------------------------------------------------------------------ */

static int call_js(request_t *r) {
  session_t *s = fuse_get_context()->private_data;
  r->res = -EIO;
  if (sem_init(&r->done, 0, 0) != 0) return -EIO;
  if (napi_call_threadsafe_function(s->tsfn, r, napi_tsfn_blocking) != napi_ok) {
    sem_destroy(&r->done);
    return -EIO;
  }
  while (sem_wait(&r->done) != 0 && errno == EINTR) {
  }
  sem_destroy(&r->done);
  return r->res;
}

static void *f_init(struct fuse_conn_info *conn, struct fuse_config *cfg) {
  session_t *s = fuse_get_context()->private_data;
  (void)cfg;
  /* Requests up to max_request both ways (libfuse derives the kernel's max_pages from
   * max_write); max_read must equal the -o max_read mount() added. */
  conn->max_write = s->max_request;
  conn->max_read = s->max_request;
  conn->max_readahead = s->max_request;
  if (s->writeback && (conn->capable & FUSE_CAP_WRITEBACK_CACHE)) conn->want |= FUSE_CAP_WRITEBACK_CACHE;
  else conn->want &= ~FUSE_CAP_WRITEBACK_CACHE;
  /* Tell JavaScript the kernel is served (mount() resolves on this). */
  request_t r = {.op = OP_INIT, .len = conn->max_write, .offset = (conn->want & FUSE_CAP_WRITEBACK_CACHE) != 0};
  call_js(&r);
  return s;
}

static int f_getattr(const char *path, struct stat *st, struct fuse_file_info *fi) {
  request_t r = {.op = fi ? OP_FGETATTR : OP_GETATTR, .path = path, .st = st, .fh = fi ? fi->fh : 0};
  memset(st, 0, sizeof *st);
  return call_js(&r);
}

static int f_readdir(const char *path, void *buf, fuse_fill_dir_t fill, off_t off, struct fuse_file_info *fi,
                     enum fuse_readdir_flags flags) {
  (void)off; (void)fi; (void)flags;
  request_t r = {.op = OP_READDIR, .path = path};
  int res = call_js(&r);
  if (res == 0 && r.names) {
    for (size_t at = 0; at < r.names_len;) {
      const char *name = r.names + at;
      if (fill(buf, name, NULL, 0, 0) != 0) break;
      at += strlen(name) + 1;
    }
  }
  free(r.names);
  return res;
}

static int f_open(const char *path, struct fuse_file_info *fi) {
  request_t r = {.op = OP_OPEN, .path = path, .mode = fi->flags};
  int res = call_js(&r);
  if (res == 0) fi->fh = r.out_fh;
  return res;
}

static int f_create(const char *path, mode_t mode, struct fuse_file_info *fi) {
  request_t r = {.op = OP_CREATE, .path = path, .mode = mode};
  int res = call_js(&r);
  if (res == 0) fi->fh = r.out_fh;
  return res;
}


/* ---- the fast path, on libfuse threads ---------------------------------------------------- */

static request_t kick_request = {.op = OP_KICK};

static size_t bucket_of(uint32_t image, int64_t idx) {
  uint64_t h = (uint64_t)image * 0x9E3779B97F4A7C15ull ^ (uint64_t)idx * 0xC2B2AE3D27D4EB4Full;
  return (size_t)(h >> 32) & (FAST_BUCKETS - 1);
}

/* Under the table's lock. */
static grain_node_t *find_grain(fast_t *f, uint32_t image, int64_t idx) {
  for (grain_node_t *n = f->buckets[bucket_of(image, idx)]; n; n = n->next)
    if (n->image == image && n->idx == idx) return n;
  return NULL;
}

/* Under the table's lock: whether sectors [from, to) of the grain hold its bytes. */
static int sectors_valid(grain_node_t *n, int64_t from, int64_t to) {
  if (!n->valid) return 1;
  for (int64_t s = from / SECTOR; s < (to + SECTOR - 1) / SECTOR; s++) {
    if ((size_t)(s >> 3) >= n->valid_len) return 0;
    if (!(__atomic_load_n(&n->valid[s >> 3], __ATOMIC_RELAXED) & (1u << (s & 7)))) return 0;
  }
  return 1;
}

static void set_valid(grain_node_t *n, int64_t from, int64_t to) {
  if (!n->valid) return;
  for (int64_t s = from / SECTOR; s < to / SECTOR && (size_t)(s >> 3) < n->valid_len; s++)
    __atomic_fetch_or(&n->valid[s >> 3], (uint8_t)(1u << (s & 7)), __ATOMIC_RELAXED);
}

/* Under the table's lock: the binding of handle fh, or NULL. */
static bound_t *bound_of(fast_t *f, uint64_t fh) {
  for (size_t i = 0; i < f->nbound; i++)
    if (f->bound[i].fh == fh) return &f->bound[i];
  return NULL;
}

/* Under the table's lock: the image bound to handle fh, or 0 (image ids start at 1). */
static uint32_t bound_image(fast_t *f, uint64_t fh) {
  bound_t *b = bound_of(f, fh);
  return b ? b->image : 0;
}

#define READ_AHEAD_GRAINS 4

/* Under the table's lock: a sequential reader (this read starts where the last one on its
 * handle ended) that enters a grain gets the next grains' files read into the page cache
 * in the background, as the kernel does within one file. */
static void read_ahead(fast_t *f, bound_t *b, uint32_t image, off_t off, size_t len) {
  int64_t g = (int64_t)f->grain_size;
  int64_t last = __atomic_exchange_n(&b->last_end, off + (int64_t)len, __ATOMIC_RELAXED);
  int enters = off % g == 0 || (off + (int64_t)len - 1) / g != off / g;
  if (last != off || !enters) return;
  for (int64_t idx = (off + (int64_t)len - 1) / g + 1, n = 0; n < READ_AHEAD_GRAINS; idx++, n++) {
    grain_node_t *next = find_grain(f, image, idx);
    if (!next || !(next->flags & FAST_READ)) break;
    posix_fadvise(next->fd, 0, g, POSIX_FADV_WILLNEED);
  }
}

/* Room for one record, before the request is served; false when JavaScript has fallen so
 * far behind that the journal is full (the request then goes to JavaScript). */
static int reserve_record(fast_t *f) {
  pthread_mutex_lock(&f->jlock);
  journal_file_t *j = f->jf;
  int ok = j->tail - j->head + f->reserved < j->capacity;
  if (ok) f->reserved++;
  pthread_mutex_unlock(&f->jlock);
  return ok;
}

/* Journals a served request in its reserved room (or gives the room back when kind is 0);
 * returns whether JavaScript must be kicked. */
static int journal(fast_t *f, int kind, uint32_t image, int64_t offset, size_t length) {
  pthread_mutex_lock(&f->jlock);
  f->reserved--;
  int kick = 0;
  if (kind) {
    journal_file_t *j = f->jf;
    double *r = j->records + 4 * (j->tail % j->capacity);
    r[0] = kind; r[1] = image; r[2] = (double)offset; r[3] = (double)length;
    __atomic_store_n(&j->tail, j->tail + 1, __ATOMIC_RELEASE);
    if (kind == REC_READ) f->reads++;
    else f->writes++;
    /* A write is taken in soon (the flusher waits for it); reads only when the journal
     * fills up, or whenever JavaScript settles anyway: waking the event loop for each would
     * cost more than serving them. */
    if (!f->kick_pending && (kind == REC_WRITE || j->tail - j->head >= j->capacity / 4)) {
      kick = 1;
      f->kick_pending = 1;
    }
  }
  pthread_mutex_unlock(&f->jlock);
  return kick;
}

static void kick(void) {
  session_t *s = fuse_get_context()->private_data;
  napi_call_threadsafe_function(s->tsfn, &kick_request, napi_tsfn_nonblocking);
}

/* Serves a read whose grains are all published for reading: the bytes read, or -1 when
 * JavaScript must serve it. */
static int fast_read(fast_t *f, char *buf, size_t len, off_t off, uint64_t fh) {
  if (len == 0) return -1;
  /* A read needs no record to be right: with the journal full it is served unrecorded
   * (JavaScript misses only its recency). */
  int recorded = reserve_record(f);
  int kind = 0;
  uint32_t image = 0;
  pthread_rwlock_rdlock(&f->lock);
  bound_t *b = bound_of(f, fh);
  image = b ? b->image : 0;
  int64_t g = (int64_t)f->grain_size;
  int64_t first = off / g, last = (off + (int64_t)len - 1) / g;
  int ok = image != 0;
  for (int64_t idx = first; ok && idx <= last; idx++) {
    grain_node_t *n = find_grain(f, image, idx);
    int64_t from = off > idx * g ? off : idx * g;
    int64_t to = off + (int64_t)len < (idx + 1) * g ? off + (int64_t)len : (idx + 1) * g;
    ok = n && (n->flags & FAST_READ) && sectors_valid(n, from - idx * g, to - idx * g);
  }
  for (int64_t idx = first; ok && idx <= last; idx++) {
    int fd = find_grain(f, image, idx)->fd;
    int64_t from = off > idx * g ? off : idx * g;
    int64_t to = off + (int64_t)len < (idx + 1) * g ? off + (int64_t)len : (idx + 1) * g;
    for (int64_t at = from; at < to;) {
      ssize_t n = pread(fd, buf + (at - off), (size_t)(to - at), at - idx * g);
      if (n < 0 && errno == EINTR) continue;
      if (n < 0) { ok = 0; break; }
      if (n == 0) { memset(buf + (at - off), 0, (size_t)(to - at)); break; } /* a hole at the file's end */
      at += n;
    }
  }
  if (ok) {
    kind = REC_READ;
    read_ahead(f, b, image, off, len);
  }
  pthread_rwlock_unlock(&f->lock);
  if (recorded && journal(f, kind, image, off, len)) kick();
  return ok ? (int)len : -1;
}

/* Serves a write of whole sectors within one grain published for writing: the bytes
 * written, or -1 when JavaScript must serve it (a part that landed before a failure is
 * journaled, and JavaScript writes the whole again). */
static int fast_write(fast_t *f, const char *buf, size_t len, off_t off, uint64_t fh) {
  int64_t g = (int64_t)f->grain_size;
  if (len == 0 || off % SECTOR != 0 || len % SECTOR != 0 || off / g != (off + (int64_t)len - 1) / g) return -1;
  if (!reserve_record(f)) return -1;
  pthread_rwlock_rdlock(&f->lock);
  uint32_t image = bound_image(f, fh);
  int64_t idx = off / g;
  grain_node_t *n = image ? find_grain(f, image, idx) : NULL;
  size_t done = 0;
  int ok = n && (n->flags & FAST_WRITE);
  while (ok && done < len) {
    ssize_t w = pwrite(n->fd, buf + done, len - done, off - idx * g + (off_t)done);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) { ok = 0; break; }
    done += (size_t)w;
  }
  done -= done % SECTOR; /* a torn sector is rewritten whole by JavaScript */
  if (done > 0) set_valid(n, off - idx * g, off - idx * g + (int64_t)done);
  int k = journal(f, done > 0 ? REC_WRITE : 0, image, off, done);
  pthread_rwlock_unlock(&f->lock);
  if (k) kick();
  return ok ? (int)len : -1;
}

static int f_read(const char *path, char *buf, size_t len, off_t off, struct fuse_file_info *fi) {
  session_t *s = fuse_get_context()->private_data;
  if (s->fast) {
    int n = fast_read(s->fast, buf, len, off, fi->fh);
    if (n >= 0) return n;
  }
  request_t r = {.op = OP_READ, .path = path, .buf = buf, .len = len, .offset = off, .fh = fi->fh};
  return call_js(&r);
}

static int f_write(const char *path, const char *buf, size_t len, off_t off, struct fuse_file_info *fi) {
  session_t *s = fuse_get_context()->private_data;
  if (s->fast) {
    int n = fast_write(s->fast, buf, len, off, fi->fh);
    if (n >= 0) return n;
  }
  request_t r = {.op = OP_WRITE, .path = path, .buf = (char *)buf, .len = len, .offset = off, .fh = fi->fh};
  return call_js(&r);
}

static int f_flush(const char *path, struct fuse_file_info *fi) {
  request_t r = {.op = OP_FLUSH, .path = path, .fh = fi->fh};
  return call_js(&r);
}

static int f_fsync(const char *path, int datasync, struct fuse_file_info *fi) {
  request_t r = {.op = OP_FSYNC, .path = path, .mode = datasync, .fh = fi->fh};
  return call_js(&r);
}

static int f_release(const char *path, struct fuse_file_info *fi) {
  request_t r = {.op = OP_RELEASE, .path = path, .fh = fi->fh};
  return call_js(&r);
}

static int f_truncate(const char *path, off_t size, struct fuse_file_info *fi) {
  request_t r = {.op = fi ? OP_FTRUNCATE : OP_TRUNCATE, .path = path, .offset = size, .fh = fi ? fi->fh : 0};
  return call_js(&r);
}

static int f_unlink(const char *path) {
  request_t r = {.op = OP_UNLINK, .path = path};
  return call_js(&r);
}

static int f_mkdir(const char *path, mode_t mode) {
  request_t r = {.op = OP_MKDIR, .path = path, .mode = mode};
  return call_js(&r);
}

static int f_rmdir(const char *path) {
  request_t r = {.op = OP_RMDIR, .path = path};
  return call_js(&r);
}

static int f_rename(const char *path, const char *dest, unsigned int flags) {
  /* RENAME_NOREPLACE/EXCHANGE are not offered; mv falls back to a plain rename on EINVAL. */
  if (flags) return -EINVAL;
  request_t r = {.op = OP_RENAME, .path = path, .path2 = dest};
  return call_js(&r);
}

static int f_chmod(const char *path, mode_t mode, struct fuse_file_info *fi) {
  (void)fi;
  request_t r = {.op = OP_CHMOD, .path = path, .mode = mode};
  return call_js(&r);
}

static int f_chown(const char *path, uid_t uid, gid_t gid, struct fuse_file_info *fi) {
  (void)fi;
  request_t r = {.op = OP_CHOWN, .path = path, .uid = uid, .gid = gid};
  return call_js(&r);
}

static double ts_ms(const struct timespec *t) { return (double)t->tv_sec * 1000.0 + (double)t->tv_nsec / 1e6; }

static int f_utimens(const char *path, const struct timespec tv[2], struct fuse_file_info *fi) {
  (void)fi;
  request_t r = {.op = OP_UTIMENS, .path = path, .atime_ms = tv ? ts_ms(&tv[0]) : 0, .mtime_ms = tv ? ts_ms(&tv[1]) : 0};
  return call_js(&r);
}

static int f_statfs(const char *path, struct statvfs *sv) {
  request_t r = {.op = OP_STATFS, .path = path, .sv = sv};
  memset(sv, 0, sizeof *sv);
  return call_js(&r);
}

static int f_fallocate(const char *path, int mode, off_t off, off_t len, struct fuse_file_info *fi) {
  request_t r = {.op = OP_FALLOCATE, .path = path, .mode = mode, .offset = off, .length = len, .fh = fi ? fi->fh : 0};
  return call_js(&r);
}

static const struct fuse_operations operations = {
    .init = f_init, .getattr = f_getattr, .readdir = f_readdir, .open = f_open, .create = f_create,
    .read = f_read, .write = f_write, .flush = f_flush, .fsync = f_fsync, .release = f_release,
    .truncate = f_truncate, .unlink = f_unlink, .mkdir = f_mkdir, .rmdir = f_rmdir, .rename = f_rename,
    .chmod = f_chmod, .chown = f_chown, .utimens = f_utimens, .statfs = f_statfs, .fallocate = f_fallocate,
};

static void *loop_thread(void *arg) {
  session_t *s = arg;
  /* Signals belong to Node's main thread (its SIGTERM/SIGINT handlers unmount); libfuse's
   * worker threads inherit this mask. */
  sigset_t all;
  sigfillset(&all);
  pthread_sigmask(SIG_BLOCK, &all, NULL);
  struct fuse_loop_config config = {.clone_fd = 0, .max_idle_threads = 10};
  s->loop_result = fuse_loop_mt(s->fuse, &config);
  request_t *ended = calloc(1, sizeof *ended);
  if (ended) {
    ended->op = OP_LOOP_ENDED;
    napi_call_threadsafe_function(s->tsfn, ended, napi_tsfn_blocking);
  }
  return NULL;
}

/* ---- Node's main thread ---------------------------------------------------------------- */

static napi_value str_or_undefined(napi_env env, const char *s) {
  napi_value v;
  if (s) napi_create_string_utf8(env, s, NAPI_AUTO_LENGTH, &v);
  else napi_get_undefined(env, &v);
  return v;
}

static napi_value num(napi_env env, double d) {
  napi_value v;
  napi_create_double(env, d, &v);
  return v;
}

static napi_value buffer_over(napi_env env, char *data, size_t len) {
  napi_value v;
  if (len == 0 || napi_create_external_buffer(env, len, data, NULL, NULL, &v) != napi_ok) {
    void *ignored;
    napi_create_buffer(env, 0, &ignored, &v);
  }
  return v;
}

/* Calls the JavaScript dispatcher as dispatch(op, request, path, ...op arguments). */
static void dispatch(napi_env env, napi_value js_dispatch, void *context, void *data) {
  request_t *r = data;
  (void)context;
  if (env == NULL) { /* the function is being torn down: nobody will answer */
    if (r->op == OP_KICK) return;
    if (r->op == OP_LOOP_ENDED) free(r);
    else { r->res = -EIO; sem_post(&r->done); }
    return;
  }
  napi_value argv[8], undefined;
  size_t argc = 3;
  napi_get_undefined(env, &undefined);
  argv[0] = num(env, r->op);
  if (r->op == OP_KICK) {
    argv[1] = undefined;
    argv[2] = undefined;
  } else if (r->op == OP_LOOP_ENDED) {
    argv[1] = undefined;
    argv[2] = undefined;
    free(r);
  } else {
    napi_create_external(env, r, NULL, NULL, &argv[1]);
    argv[2] = str_or_undefined(env, r->path);
  }
  switch (r->op) {
    case OP_FGETATTR: case OP_FLUSH: case OP_RELEASE:
      argv[argc++] = num(env, (double)r->fh); break;
    case OP_OPEN: case OP_CREATE: case OP_MKDIR: case OP_CHMOD:
      argv[argc++] = num(env, (double)r->mode); break;
    case OP_READ: case OP_WRITE:
      argv[argc++] = num(env, (double)r->fh);
      argv[argc++] = buffer_over(env, r->buf, r->len);
      argv[argc++] = num(env, (double)r->len);
      argv[argc++] = num(env, (double)r->offset);
      break;
    case OP_FSYNC:
      argv[argc++] = num(env, (double)r->mode);
      argv[argc++] = num(env, (double)r->fh);
      break;
    case OP_TRUNCATE:
      argv[argc++] = num(env, (double)r->offset); break;
    case OP_FTRUNCATE:
      argv[argc++] = num(env, (double)r->fh);
      argv[argc++] = num(env, (double)r->offset);
      break;
    case OP_RENAME:
      argv[argc++] = str_or_undefined(env, r->path2); break;
    case OP_CHOWN:
      argv[argc++] = num(env, (double)r->uid);
      argv[argc++] = num(env, (double)r->gid);
      break;
    case OP_UTIMENS:
      argv[argc++] = num(env, r->atime_ms);
      argv[argc++] = num(env, r->mtime_ms);
      break;
    case OP_INIT:
      argv[argc++] = num(env, (double)r->len);
      argv[argc++] = num(env, (double)r->offset);
      break;
    case OP_FALLOCATE:
      argv[argc++] = num(env, (double)r->mode);
      argv[argc++] = num(env, (double)r->offset);
      argv[argc++] = num(env, (double)r->length);
      argv[argc++] = num(env, (double)r->fh);
      break;
    default: break;
  }
  napi_status st = napi_call_function(env, undefined, js_dispatch, argc, argv, NULL);
  if (st == napi_pending_exception) {
    /* The JavaScript side answers its own failures; an exception here is a bug in it. */
    napi_value err;
    napi_get_and_clear_last_exception(env, &err);
    napi_fatal_exception(env, err);
  }
}

static double get_num(napi_env env, napi_value arr, uint32_t i) {
  napi_value v;
  double d = 0;
  if (napi_get_element(env, arr, i, &v) == napi_ok) napi_get_value_double(env, v, &d);
  return d;
}

static void set_time(struct timespec *t, double ms) {
  t->tv_sec = (time_t)(ms / 1000.0);
  t->tv_nsec = (long)((ms - (double)t->tv_sec * 1000.0) * 1e6);
}

static void detach(napi_env env, napi_value buffer) {
  bool is_typed = false;
  napi_value ab;
  napi_typedarray_type type;
  size_t length, offset;
  void *data;
  if (napi_is_typedarray(env, buffer, &is_typed) != napi_ok || !is_typed) return;
  if (napi_get_typedarray_info(env, buffer, &type, &length, &data, &ab, &offset) != napi_ok) return;
  if (length > 0) napi_detach_arraybuffer(env, ab);
}

/* reply(request, result, value): value is the answer of getattr (an array of mode, uid,
 * gid, size, nlink, blksize, blocks, atime, mtime, ctime in ms), statfs (bsize, frsize,
 * blocks, bfree, bavail, files, ffree, favail, fsid, flag, namemax), readdir (names),
 * open/create (the handle number), read/write (the buffer handed out, to detach). */
static napi_value reply(napi_env env, napi_callback_info info) {
  size_t argc = 3;
  napi_value argv[3];
  CHECK(env, napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  request_t *r;
  CHECK(env, napi_get_value_external(env, argv[0], (void **)&r));
  int32_t res = -EIO;
  napi_get_value_int32(env, argv[1], &res);
  napi_valuetype vt = napi_undefined;
  if (argc > 2) napi_typeof(env, argv[2], &vt);
  bool is_array = false;
  if (argc > 2) napi_is_array(env, argv[2], &is_array);
  switch (r->op) {
    case OP_GETATTR: case OP_FGETATTR:
      if (res == 0 && is_array) {
        struct stat *st = r->st;
        st->st_mode = (mode_t)get_num(env, argv[2], 0);
        st->st_uid = (uid_t)get_num(env, argv[2], 1);
        st->st_gid = (gid_t)get_num(env, argv[2], 2);
        st->st_size = (off_t)get_num(env, argv[2], 3);
        st->st_nlink = (nlink_t)get_num(env, argv[2], 4);
        st->st_blksize = (blksize_t)get_num(env, argv[2], 5);
        st->st_blocks = (blkcnt_t)get_num(env, argv[2], 6);
        set_time(&st->st_atim, get_num(env, argv[2], 7));
        set_time(&st->st_mtim, get_num(env, argv[2], 8));
        set_time(&st->st_ctim, get_num(env, argv[2], 9));
      } else if (res == 0) res = -EIO;
      break;
    case OP_STATFS:
      if (res == 0 && is_array) {
        struct statvfs *sv = r->sv;
        sv->f_bsize = (unsigned long)get_num(env, argv[2], 0);
        sv->f_frsize = (unsigned long)get_num(env, argv[2], 1);
        sv->f_blocks = (fsblkcnt_t)get_num(env, argv[2], 2);
        sv->f_bfree = (fsblkcnt_t)get_num(env, argv[2], 3);
        sv->f_bavail = (fsblkcnt_t)get_num(env, argv[2], 4);
        sv->f_files = (fsfilcnt_t)get_num(env, argv[2], 5);
        sv->f_ffree = (fsfilcnt_t)get_num(env, argv[2], 6);
        sv->f_favail = (fsfilcnt_t)get_num(env, argv[2], 7);
        sv->f_fsid = (unsigned long)get_num(env, argv[2], 8);
        sv->f_flag = (unsigned long)get_num(env, argv[2], 9);
        sv->f_namemax = (unsigned long)get_num(env, argv[2], 10);
      } else if (res == 0) res = -EIO;
      break;
    case OP_READDIR:
      if (res == 0 && is_array) {
        uint32_t n = 0;
        napi_get_array_length(env, argv[2], &n);
        size_t total = 0;
        for (uint32_t i = 0; i < n; i++) {
          napi_value v;
          size_t len = 0;
          napi_get_element(env, argv[2], i, &v);
          if (napi_get_value_string_utf8(env, v, NULL, 0, &len) == napi_ok) total += len + 1;
        }
        r->names = malloc(total ? total : 1);
        if (!r->names) { res = -ENOMEM; break; }
        size_t at = 0;
        for (uint32_t i = 0; i < n; i++) {
          napi_value v;
          size_t len = 0;
          napi_get_element(env, argv[2], i, &v);
          if (napi_get_value_string_utf8(env, v, r->names + at, total - at, &len) == napi_ok) at += len + 1;
        }
        r->names_len = at;
      } else if (res == 0) res = -EIO;
      break;
    case OP_OPEN: case OP_CREATE:
      if (res == 0 && vt == napi_number) {
        double fh = 0;
        napi_get_value_double(env, argv[2], &fh);
        r->out_fh = (uint64_t)fh;
      }
      break;
    case OP_READ: case OP_WRITE:
      if (argc > 2 && vt == napi_object) detach(env, argv[2]);
      if (res > (int32_t)r->len) res = -EIO;
      break;
    default: break;
  }
  r->res = res;
  sem_post(&r->done);
  return NULL;
}

static void finalize_session(napi_env env, void *data, void *hint) {
  (void)env; (void)hint;
  session_t *s = data;
  /* Only a session whose loop was joined is freed; a live one is left to the process. */
  if (s->joined) free(s);
}

/* mount(mountpoint, options, writeback, maxRequest, dispatch) → session. Mounts at once;
 * the session loop serves requests from then on, starting with OP_INIT. Throws with
 * libfuse's reason on failure. */
static napi_value mount(napi_env env, napi_callback_info info) {
  size_t argc = 6;
  napi_value argv[6];
  CHECK(env, napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  fast_t *fast = NULL;
  napi_valuetype fast_type = napi_undefined;
  if (argc > 5) napi_typeof(env, argv[5], &fast_type);
  if (fast_type == napi_external) CHECK(env, napi_get_value_external(env, argv[5], (void **)&fast));
  char mountpoint[4096], given[4000], options[4096];
  size_t len;
  CHECK(env, napi_get_value_string_utf8(env, argv[0], mountpoint, sizeof mountpoint, &len));
  CHECK(env, napi_get_value_string_utf8(env, argv[1], given, sizeof given, &len));
  bool writeback = false;
  CHECK(env, napi_get_value_bool(env, argv[2], &writeback));
  uint32_t max_request = 0;
  CHECK(env, napi_get_value_uint32(env, argv[3], &max_request));

  session_t *s = calloc(1, sizeof *s);
  if (!s) { napi_throw_error(env, NULL, "out of memory"); return NULL; }
  s->writeback = writeback;
  s->max_request = max_request;
  s->fast = fast;
  snprintf(options, sizeof options, "%s%smax_read=%u", given, *given ? "," : "", max_request);
  char *fargv[] = {"blobdisk", "-o", options, NULL};
  struct fuse_args args = FUSE_ARGS_INIT(3, fargv);
  s->fuse = fuse_new(&args, &operations, sizeof operations, s);
  if (!s->fuse) {
    free(s);
    napi_throw_error(env, NULL, "libfuse refused the mount options");
    return NULL;
  }
  napi_value name;
  napi_create_string_utf8(env, "blobdisk-fuse3", NAPI_AUTO_LENGTH, &name);
  if (napi_create_threadsafe_function(env, argv[4], NULL, name, 0, 1, NULL, NULL, s, dispatch, &s->tsfn) != napi_ok) {
    fuse_destroy(s->fuse);
    free(s);
    napi_throw_error(env, NULL, "cannot create the FUSE dispatcher");
    return NULL;
  }
  if (fuse_mount(s->fuse, mountpoint) != 0) {
    fuse_destroy(s->fuse);
    napi_release_threadsafe_function(s->tsfn, napi_tsfn_abort);
    free(s);
    napi_throw_error(env, NULL, "the kernel refused the mount (see libfuse's message above)");
    return NULL;
  }
  if (pthread_create(&s->thread, NULL, loop_thread, s) != 0) {
    fuse_unmount(s->fuse);
    fuse_destroy(s->fuse);
    napi_release_threadsafe_function(s->tsfn, napi_tsfn_abort);
    free(s);
    napi_throw_error(env, NULL, "cannot start the FUSE session thread");
    return NULL;
  }
  s->thread_started = 1;
  napi_value handle;
  CHECK(env, napi_create_external(env, s, finalize_session, NULL, &handle));
  return handle;
}

/* unmount(session): ends the session loop and detaches the mount (lazily, as fusermount -z
 * does); the dispatcher then sees OP_LOOP_ENDED and calls join(). Never blocks on requests. */
static napi_value unmount(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  CHECK(env, napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  session_t *s;
  CHECK(env, napi_get_value_external(env, argv[0], (void **)&s));
  if (!s->unmounted && !s->joined) { /* after join() libfuse's state is gone */
    s->unmounted = 1;
    fuse_exit(s->fuse);
    fuse_unmount(s->fuse);
  }
  return NULL;
}

/* join(session): after OP_LOOP_ENDED, collects the loop thread and frees libfuse's state. */
static napi_value join(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  CHECK(env, napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  session_t *s;
  CHECK(env, napi_get_value_external(env, argv[0], (void **)&s));
  napi_value result;
  if (!s->joined && s->thread_started) {
    pthread_join(s->thread, NULL);
    if (!s->unmounted) fuse_unmount(s->fuse);
    fuse_destroy(s->fuse);
    napi_release_threadsafe_function(s->tsfn, napi_tsfn_release);
    s->joined = 1;
  }
  napi_create_int32(env, s->loop_result, &result);
  return result;
}

/* unref(session): lets the process exit although the loop has not ended (a lazily
 * detached mount still held open by someone sends no more requests to end it). */
static napi_value unref(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  CHECK(env, napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  session_t *s;
  CHECK(env, napi_get_value_external(env, argv[0], (void **)&s));
  if (!s->joined) napi_unref_threadsafe_function(env, s->tsfn);
  return NULL;
}


/* ---- the fast path's table, from Node's main thread ---------------------------------------- */

static fast_t *fast_arg(napi_env env, napi_callback_info info, size_t want, napi_value *argv) {
  size_t argc = want;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc < want) {
    napi_throw_error(env, NULL, "fuse3 binding: missing arguments");
    return NULL;
  }
  fast_t *f = NULL;
  if (napi_get_value_external(env, argv[0], (void **)&f) != napi_ok) napi_throw_error(env, NULL, "fuse3 binding: not a fast table");
  return f;
}

static double arg_num(napi_env env, napi_value v) {
  double d = 0;
  napi_get_value_double(env, v, &d);
  return d;
}

/* fastCreate(grainSize, journalFile) → table. The journal file is created, or kept with
 * the records a killed process left (drain returns them first). The table lives as long as
 * the process: libfuse threads of a session that uses it may outlive every JavaScript
 * reference. */
static napi_value fast_create(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2];
  CHECK(env, napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  char file[4096];
  size_t len;
  CHECK(env, napi_get_value_string_utf8(env, argv[1], file, sizeof file, &len));
  size_t bytes = sizeof(journal_file_t) + sizeof(double) * 4 * JOURNAL_RECORDS;
  int fd = open(file, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
  if (fd < 0 || ftruncate(fd, (off_t)bytes) != 0) {
    char why[4200];
    snprintf(why, sizeof why, "cannot open the fast path journal %s: %s", file, strerror(errno));
    if (fd >= 0) close(fd);
    napi_throw_error(env, NULL, why);
    return NULL;
  }
  journal_file_t *jf = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  close(fd);
  fast_t *f = calloc(1, sizeof *f);
  if (jf == MAP_FAILED || !f) {
    if (jf != MAP_FAILED) munmap(jf, bytes);
    free(f);
    napi_throw_error(env, NULL, "cannot map the fast path journal");
    return NULL;
  }
  if (jf->magic != JOURNAL_MAGIC || jf->capacity != JOURNAL_RECORDS || jf->tail < jf->head || jf->tail - jf->head > JOURNAL_RECORDS) {
    jf->capacity = JOURNAL_RECORDS;
    jf->head = jf->tail = 0;
    __atomic_store_n(&jf->magic, JOURNAL_MAGIC, __ATOMIC_RELEASE);
  }
  f->grain_size = (uint64_t)arg_num(env, argv[0]);
  f->jf = jf;
  f->taken = jf->head;
  /* Writers first: with readers preferred, a few readers in a row on libfuse's threads
   * could keep a revoke (and with it Node's event loop) waiting. */
  pthread_rwlockattr_t attr;
  pthread_rwlockattr_init(&attr);
  pthread_rwlockattr_setkind_np(&attr, PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP);
  pthread_rwlock_init(&f->lock, &attr);
  pthread_rwlockattr_destroy(&attr);
  pthread_mutex_init(&f->jlock, NULL);
  napi_value v;
  CHECK(env, napi_create_external(env, f, NULL, NULL, &v));
  return v;
}

/* fastPublish(table, image, idx, fd, flags, valid): the grain is served here through fd
 * (a new fd replaces the flags, the same one adds to them); valid is its sector bitmap, or
 * null when every sector holds its bytes. */
static napi_value fast_publish(napi_env env, napi_callback_info info) {
  napi_value argv[6];
  fast_t *f = fast_arg(env, info, 6, argv);
  if (!f) return NULL;
  uint32_t image = (uint32_t)arg_num(env, argv[1]);
  int64_t idx = (int64_t)arg_num(env, argv[2]);
  int fd = (int)arg_num(env, argv[3]), flags = (int)arg_num(env, argv[4]);
  bool is_buffer = false;
  void *bits = NULL;
  size_t bits_len = 0;
  napi_is_buffer(env, argv[5], &is_buffer);
  if (is_buffer) napi_get_buffer_info(env, argv[5], &bits, &bits_len);
  grain_node_t *fresh = malloc(sizeof *fresh);
  uint8_t *valid = is_buffer ? malloc(bits_len ? bits_len : 1) : NULL;
  if (!fresh || (is_buffer && !valid)) {
    free(fresh);
    free(valid);
    napi_throw_error(env, NULL, "out of memory");
    return NULL;
  }
  if (valid && bits_len) memcpy(valid, bits, bits_len);
  uint8_t *old = NULL;
  pthread_rwlock_wrlock(&f->lock);
  grain_node_t *n = find_grain(f, image, idx);
  if (!n) {
    *fresh = (grain_node_t){.image = image, .idx = idx, .fd = fd};
    size_t b = bucket_of(image, idx);
    fresh->next = f->buckets[b];
    f->buckets[b] = fresh;
    n = fresh;
    fresh = NULL;
  }
  n->flags = n->fd == fd ? n->flags | flags : flags;
  n->fd = fd;
  old = n->valid;
  n->valid = valid;
  n->valid_len = bits_len;
  pthread_rwlock_unlock(&f->lock);
  free(old);
  free(fresh);
  return NULL;
}

/* fastRevoke(table, image, idx): once it returns, no request of the grain is served here,
 * and those served before are journaled. */
static napi_value fast_revoke(napi_env env, napi_callback_info info) {
  napi_value argv[3];
  fast_t *f = fast_arg(env, info, 3, argv);
  if (!f) return NULL;
  uint32_t image = (uint32_t)arg_num(env, argv[1]);
  int64_t idx = (int64_t)arg_num(env, argv[2]);
  grain_node_t *gone = NULL;
  pthread_rwlock_wrlock(&f->lock);
  for (grain_node_t **p = &f->buckets[bucket_of(image, idx)]; *p; p = &(*p)->next) {
    if ((*p)->image == image && (*p)->idx == idx) {
      gone = *p;
      *p = gone->next;
      break;
    }
  }
  pthread_rwlock_unlock(&f->lock);
  if (gone) free(gone->valid);
  free(gone);
  return NULL;
}

/* fastBind(table, fh, image) / fastBind(table, fh, 0) unbinds: requests on handle fh are
 * of that image. */
static napi_value fast_bind(napi_env env, napi_callback_info info) {
  napi_value argv[3];
  fast_t *f = fast_arg(env, info, 3, argv);
  if (!f) return NULL;
  uint64_t fh = (uint64_t)arg_num(env, argv[1]);
  uint32_t image = (uint32_t)arg_num(env, argv[2]);
  pthread_rwlock_wrlock(&f->lock);
  size_t i = 0;
  while (i < f->nbound && f->bound[i].fh != fh) i++;
  if (image == 0) {
    if (i < f->nbound) f->bound[i] = f->bound[--f->nbound];
  } else if (i < f->nbound) {
    f->bound[i].image = image;
  } else {
    if (f->nbound == f->capbound) {
      size_t cap = f->capbound ? 2 * f->capbound : 16;
      bound_t *grown = realloc(f->bound, cap * sizeof *grown);
      if (grown) { f->bound = grown; f->capbound = cap; }
    }
    if (f->nbound < f->capbound) f->bound[f->nbound++] = (bound_t){.fh = fh, .image = image, .last_end = -1};
  }
  pthread_rwlock_unlock(&f->lock);
  return NULL;
}

/* fastDrain(table) → the records journaled since the last drain as a Float64Array: first
 * the journal position after them (for fastAck), then 4 numbers a record; undefined when
 * there are none. */
static napi_value fast_drain(napi_env env, napi_callback_info info) {
  napi_value argv[1];
  fast_t *f = fast_arg(env, info, 1, argv);
  if (!f) return NULL;
  napi_value result, ab;
  double *data = NULL;
  pthread_mutex_lock(&f->jlock);
  f->kick_pending = 0;
  journal_file_t *j = f->jf;
  uint64_t from = f->taken, to = j->tail;
  size_t n = (size_t)(to - from);
  if (n > 0 && napi_create_arraybuffer(env, (1 + n * 4) * sizeof(double), (void **)&data, &ab) == napi_ok) {
    data[0] = (double)to;
    for (uint64_t i = from; i < to; i++) memcpy(data + 1 + 4 * (i - from), j->records + 4 * (i % j->capacity), 4 * sizeof(double));
    f->taken = to;
  } else n = 0;
  pthread_mutex_unlock(&f->jlock);
  if (n == 0) {
    napi_get_undefined(env, &result);
    return result;
  }
  CHECK(env, napi_create_typedarray(env, napi_float64_array, 1 + n * 4, ab, 0, &result));
  return result;
}

/* fastAck(table, position): the records before position are in the grain map; their room
 * is free again. */
static napi_value fast_ack(napi_env env, napi_callback_info info) {
  napi_value argv[2];
  fast_t *f = fast_arg(env, info, 2, argv);
  if (!f) return NULL;
  uint64_t to = (uint64_t)arg_num(env, argv[1]);
  pthread_mutex_lock(&f->jlock);
  journal_file_t *j = f->jf;
  if (to > j->head && to <= f->taken) __atomic_store_n(&j->head, to, __ATOMIC_RELEASE);
  pthread_mutex_unlock(&f->jlock);
  return NULL;
}

/* fastServed(table) → [reads, writes] served here so far. */
static napi_value fast_served(napi_env env, napi_callback_info info) {
  napi_value argv[1];
  fast_t *f = fast_arg(env, info, 1, argv);
  if (!f) return NULL;
  pthread_mutex_lock(&f->jlock);
  double reads = f->reads, writes = f->writes;
  pthread_mutex_unlock(&f->jlock);
  napi_value arr;
  CHECK(env, napi_create_array_with_length(env, 2, &arr));
  napi_set_element(env, arr, 0, num(env, reads));
  napi_set_element(env, arr, 1, num(env, writes));
  return arr;
}

static napi_value init(napi_env env, napi_value exports) {
  napi_property_descriptor props[] = {
      {"mount", NULL, mount, NULL, NULL, NULL, napi_default, NULL},
      {"unmount", NULL, unmount, NULL, NULL, NULL, napi_default, NULL},
      {"join", NULL, join, NULL, NULL, NULL, napi_default, NULL},
      {"unref", NULL, unref, NULL, NULL, NULL, napi_default, NULL},
      {"reply", NULL, reply, NULL, NULL, NULL, napi_default, NULL},
      {"fastCreate", NULL, fast_create, NULL, NULL, NULL, napi_default, NULL},
      {"fastPublish", NULL, fast_publish, NULL, NULL, NULL, napi_default, NULL},
      {"fastRevoke", NULL, fast_revoke, NULL, NULL, NULL, napi_default, NULL},
      {"fastBind", NULL, fast_bind, NULL, NULL, NULL, napi_default, NULL},
      {"fastDrain", NULL, fast_drain, NULL, NULL, NULL, napi_default, NULL},
      {"fastAck", NULL, fast_ack, NULL, NULL, NULL, napi_default, NULL},
      {"fastServed", NULL, fast_served, NULL, NULL, NULL, napi_default, NULL},
  };
  CHECK(env, napi_define_properties(env, exports, sizeof props / sizeof props[0], props));
  return exports;
}

NAPI_MODULE(NODE_GYP_MODULE_NAME, init)
