/* A tiny libfuse3 filesystem: one file "disk.img" of 256 MiB held in memory, read-write,
 * with fallocate(PUNCH_HOLE). What a native libfuse3 binding could reach on this machine at
 * best, measured against the bare fuse-native filesystem by run.sh (see bench/README.md).
 * Build: gcc -O2 -o memfs3 memfs3.c $(pkg-config --cflags --libs fuse3)  (libfuse3-dev) */
#define FUSE_USE_VERSION 35
#include <fuse3/fuse.h>
#include <string.h>
#include <errno.h>
#include <stdlib.h>
#include <stdio.h>
#include <fcntl.h>
#include <unistd.h>
#include <sys/stat.h>

static char *data;
static off_t size = 256L << 20;

static int m_getattr(const char *p, struct stat *st, struct fuse_file_info *fi) {
  (void)fi; memset(st, 0, sizeof *st);
  if (!strcmp(p, "/")) { st->st_mode = S_IFDIR | 0755; st->st_nlink = 2; return 0; }
  if (!strcmp(p, "/disk.img")) { st->st_mode = S_IFREG | 0644; st->st_nlink = 1; st->st_size = size; return 0; }
  return -ENOENT;
}
static int m_readdir(const char *p, void *buf, fuse_fill_dir_t fill, off_t off, struct fuse_file_info *fi, enum fuse_readdir_flags fl) {
  (void)p; (void)off; (void)fi; (void)fl;
  fill(buf, ".", NULL, 0, 0); fill(buf, "..", NULL, 0, 0); fill(buf, "disk.img", NULL, 0, 0); return 0;
}
static int m_open(const char *p, struct fuse_file_info *fi) { (void)fi; return strcmp(p, "/disk.img") ? -ENOENT : 0; }
static int m_read(const char *p, char *buf, size_t len, off_t off, struct fuse_file_info *fi) {
  (void)p; (void)fi; if (off >= size) return 0; if (off + (off_t)len > size) len = size - off;
  memcpy(buf, data + off, len); return len;
}
static int m_write(const char *p, const char *buf, size_t len, off_t off, struct fuse_file_info *fi) {
  (void)p; (void)fi; if (off + (off_t)len > size) return -EFBIG; memcpy(data + off, buf, len); return len;
}
static int m_fsync(const char *p, int d, struct fuse_file_info *fi) { (void)p; (void)d; (void)fi; return 0; }
static int m_fallocate(const char *p, int mode, off_t off, off_t len, struct fuse_file_info *fi) {
  (void)p; (void)fi; if (!(mode & 0x02 /* FALLOC_FL_PUNCH_HOLE */)) return -EOPNOTSUPP;
  if (off + len > size) len = size - off;
  memset(data + off, 0, len);
  return 0;
}
static void *m_init(struct fuse_conn_info *conn, struct fuse_config *cfg) {
  (void)cfg; const char *wb = getenv("MEMFS_WRITEBACK");
  if (wb && *wb == '1' && (conn->capable & FUSE_CAP_WRITEBACK_CACHE)) conn->want |= FUSE_CAP_WRITEBACK_CACHE;
  return NULL;
}
static const struct fuse_operations ops = {
  .init = m_init, .getattr = m_getattr, .readdir = m_readdir, .open = m_open, .read = m_read, .write = m_write,
  .fsync = m_fsync, .fallocate = m_fallocate,
};
int main(int argc, char **argv) {
  data = calloc(1, size);
  const char *src = getenv("MEMFS_DATA");
  if (src) { FILE *f = fopen(src, "rb"); if (f) { fread(data, 1, size, f); fclose(f); } }
  return fuse_main(argc, argv, &ops, NULL);
}
