/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * failfs: a read-only mirror of a directory (FUSE, libfuse high-level API)
 * whose reads fail with EIO where they touch a chosen byte range of the
 * files whose name contains a chosen string: a disk with a bad region, for
 * the tests that check that composefs-fuse tells an I/O error from
 * tampering.  Test code only.
 *
 *   failfs -o src=DIR,fail_name=STR,fail_off=N,fail_len=N [FUSE options] MNT
 */
#define FUSE_USE_VERSION 31

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <fuse.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static struct {
	char *src, *fail_name;
	char *fail_off_s, *fail_len_s;
	unsigned long long fail_off, fail_len;
} cfg;

#define OPT(t, p) { t, offsetof(__typeof__(cfg), p), 1 }
static const struct fuse_opt opts[] = {
	OPT("src=%s", src),
	OPT("fail_name=%s", fail_name),
	OPT("fail_off=%s", fail_off_s),
	OPT("fail_len=%s", fail_len_s),
	FUSE_OPT_END,
};

static int real(const char *path, char *buf, size_t bufsz)
{
	return snprintf(buf, bufsz, "%s%s", cfg.src, path) >= (int)bufsz ? -ENAMETOOLONG : 0;
}

static int ff_getattr(const char *path, struct stat *st, struct fuse_file_info *fi)
{
	char p[4096];

	if (real(path, p, sizeof(p)) < 0)
		return -ENAMETOOLONG;
	return lstat(p, st) < 0 ? -errno : 0;
}

static int ff_readlink(const char *path, char *buf, size_t size)
{
	char p[4096];
	ssize_t n;

	if (real(path, p, sizeof(p)) < 0)
		return -ENAMETOOLONG;
	n = readlink(p, buf, size - 1);
	if (n < 0)
		return -errno;
	buf[n] = '\0';
	return 0;
}

static int ff_readdir(const char *path, void *buf, fuse_fill_dir_t fill, off_t off,
		      struct fuse_file_info *fi, enum fuse_readdir_flags flags)
{
	char p[4096];
	DIR *d;
	struct dirent *e;

	if (real(path, p, sizeof(p)) < 0)
		return -ENAMETOOLONG;
	d = opendir(p);
	if (!d)
		return -errno;
	while ((e = readdir(d)) != NULL)
		fill(buf, e->d_name, NULL, 0, 0);
	closedir(d);
	return 0;
}

static int ff_open(const char *path, struct fuse_file_info *fi)
{
	char p[4096];
	int fd;

	if ((fi->flags & O_ACCMODE) != O_RDONLY)
		return -EROFS;
	if (real(path, p, sizeof(p)) < 0)
		return -ENAMETOOLONG;
	fd = open(p, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	fi->fh = (uint64_t)fd;
	/* direct_io: every read reaches us, the failure stays put */
	fi->direct_io = 1;
	return 0;
}

static int ff_read(const char *path, char *buf, size_t size, off_t off, struct fuse_file_info *fi)
{
	ssize_t n;

	if (cfg.fail_name && strstr(path, cfg.fail_name) && (unsigned long long)off < cfg.fail_off + cfg.fail_len &&
	    (unsigned long long)off + size > cfg.fail_off)
		return -EIO;
	n = pread((int)fi->fh, buf, size, off);
	return n < 0 ? -errno : (int)n;
}

static int ff_release(const char *path, struct fuse_file_info *fi)
{
	close((int)fi->fh);
	return 0;
}

static const struct fuse_operations ops = {
	.getattr = ff_getattr,
	.readlink = ff_readlink,
	.readdir = ff_readdir,
	.open = ff_open,
	.read = ff_read,
	.release = ff_release,
};

int main(int argc, char *argv[])
{
	struct fuse_args args = FUSE_ARGS_INIT(argc, argv);

	if (fuse_opt_parse(&args, &cfg, opts, NULL) < 0 || !cfg.src) {
		fprintf(stderr, "usage: failfs -o src=DIR[,fail_name=S,fail_off=N,fail_len=N] MNT\n");
		return 2;
	}
	cfg.fail_off = cfg.fail_off_s ? strtoull(cfg.fail_off_s, NULL, 0) : 0;
	cfg.fail_len = cfg.fail_len_s ? strtoull(cfg.fail_len_s, NULL, 0) : 0;
	return fuse_main(args.argc, args.argv, &ops, NULL);
}
