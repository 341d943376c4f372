/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * libFuzzer target: the input is a redirect path from a hostile image,
 * opened through the object store as composefs-fuse opens one.  The store
 * holds objects, a directory, symlinks (absolute and relative, to files
 * inside and outside it) and a FIFO; outside it waits a file of the same
 * size as the objects.  Refusing is fine; opening anything that is not a
 * regular file below the store, blocking, crashing or leaking is not.
 */
#include <fcntl.h>
#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cas.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static char top[64];
static char store[96];
static struct cfs_cas *cas;

static void put(const char *rel, const char *content)
{
	char p[256];
	int fd;

	snprintf(p, sizeof(p), "%s/%s", top, rel);
	fd = open(p, O_WRONLY | O_CREAT | O_TRUNC, 0644);
	if (fd < 0 || write(fd, content, strlen(content)) != (ssize_t)strlen(content))
		abort();
	close(fd);
}

static void cleanup(void)
{
	static const char *const files[] = { "store/ab/cdef", "store/ab/in-link", "store/ok", "store/abs-link",
					     "store/rel-link", "store/dirlink", "store/fifo", "outside" };
	static const char *const dirs[] = { "store/ab", "store", "" };
	char p[256];

	cas = cfs_cas_unref(cas);
	for (size_t i = 0; i < sizeof(files) / sizeof(files[0]); i++) {
		snprintf(p, sizeof(p), "%s/%s", top, files[i]);
		unlink(p);
	}
	for (size_t i = 0; i < sizeof(dirs) / sizeof(dirs[0]); i++) {
		snprintf(p, sizeof(p), "%s/%s", top, dirs[i]);
		rmdir(p);
	}
}

static void setup(void)
{
	struct cfs_cas_options o = { .verify = false, .io = CFS_IO_PREAD, .max_idle_objects = 4 };
	char p[256], q[256];

	if (cas)
		return;
	snprintf(top, sizeof(top), "/tmp/fuzz-redirect-XXXXXX");
	if (!mkdtemp(top))
		abort();
	snprintf(store, sizeof(store), "%s/store", top);
	snprintf(p, sizeof(p), "%s/store/ab", top);
	if (mkdir(store, 0755) < 0 || mkdir(p, 0755) < 0)
		abort();
	put("outside", "SECRT");
	put("store/ab/cdef", "fine1");
	put("store/ok", "fine2");
	snprintf(p, sizeof(p), "%s/outside", top);
	snprintf(q, sizeof(q), "%s/abs-link", store);
	if (symlink(p, q) < 0)
		abort();
	snprintf(q, sizeof(q), "%s/rel-link", store);
	if (symlink("../outside", q) < 0)
		abort();
	snprintf(q, sizeof(q), "%s/ab/in-link", store);
	if (symlink("cdef", q) < 0)
		abort();
	snprintf(q, sizeof(q), "%s/dirlink", store);
	if (symlink("..", q) < 0)
		abort();
	snprintf(q, sizeof(q), "%s/fifo", store);
	if (mkfifo(q, 0644) < 0)
		abort();
	if (cfs_cas_open(store, &o, &cas) < 0)
		abort();
	atexit(cleanup);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct cfs_object *obj = NULL;
	char fdpath[64], real[PATH_MAX];
	struct stat st;
	ssize_t n;
	int r;

	setup();
	r = cfs_cas_open_object(cas, (const char *)data, size, NULL, 5, &obj);
	if (r < 0)
		return 0;
	/* Opened: it must be one of the two objects, below the store. */
	snprintf(fdpath, sizeof(fdpath), "/proc/self/fd/%d", cfs_object_fd(obj));
	n = readlink(fdpath, real, sizeof(real) - 1);
	if (n < 0)
		abort();
	real[n] = '\0';
	if (strncmp(real, store, strlen(store)) != 0 || real[strlen(store)] != '/')
		abort();
	if (fstat(cfs_object_fd(obj), &st) < 0 || !S_ISREG(st.st_mode))
		abort();
	cfs_object_unref(obj);
	return 0;
}
