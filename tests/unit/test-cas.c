/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Unit tests of the object store and the verification engine (cas/).
 * Every test builds its own store under a temporary directory.  The
 * expected digests below were computed with Debian's `fsverity digest`.
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <pwd.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cas-internal.h"
#include "cfs-tools.h"

#define CHECK(cond)                                                                        \
	do {                                                                               \
		if (!(cond)) {                                                             \
			fprintf(stderr, "%s:%d: %s: check failed: %s\n", __FILE__, __LINE__, \
				__func__, #cond);                                          \
			abort();                                                           \
		}                                                                          \
	} while (0)
#define CHECK_EQ(a, b)                                                                        \
	do {                                                                                  \
		long long _a = (long long)(a), _b = (long long)(b);                           \
		if (_a != _b) {                                                               \
			fprintf(stderr, "%s:%d: %s: %s == %lld, expected %s == %lld\n", __FILE__, \
				__LINE__, __func__, #a, _a, #b, _b);                          \
			abort();                                                              \
		}                                                                             \
	} while (0)

static char tmpdir[] = "/tmp/test-cas-XXXXXX";
static enum cfs_io_backend io_mode = CFS_IO_PREAD;

static char *pathf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static char *pathf(const char *fmt, ...)
{
	va_list ap;
	char *s;

	va_start(ap, fmt);
	CHECK(vasprintf(&s, fmt, ap) >= 0);
	va_end(ap);
	return s;
}

static uint8_t *pattern(size_t len, unsigned seed)
{
	uint8_t *p = malloc(len ? len : 1);

	CHECK(p);
	for (size_t i = 0; i < len; i++)
		p[i] = (uint8_t)(i * 7 + 3 + seed * (i >> 12));
	return p;
}

static void write_file(const char *path, const void *data, size_t len)
{
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);

	CHECK(fd >= 0);
	CHECK(write(fd, data, len) == (ssize_t)len);
	CHECK(close(fd) == 0);
}

static void patch_file(const char *path, uint64_t off, uint8_t xor)
{
	int fd = open(path, O_RDWR | O_CLOEXEC);
	uint8_t b;

	CHECK(fd >= 0);
	CHECK(pread(fd, &b, 1, (off_t)off) == 1);
	b ^= xor;
	CHECK(pwrite(fd, &b, 1, (off_t)off) == 1);
	CHECK(close(fd) == 0);
}

/* A new store directory with one object; returns the store path and fills
 * the digest and the object path. */
struct obj_info {
	char *store, *path, redirect[80];
	uint8_t digest[CFS_DIGEST_SIZE];
	uint8_t *data;
	size_t size;
};

static void put_object(const char *store, const uint8_t *data, size_t len, struct obj_info *o)
{
	char hex[65];
	char *dir;

	memset(o, 0, sizeof(*o));
	o->store = strdup(store);
	CHECK(cfs_fsverity_digest_mem(data, len, o->digest) == 0);
	cfs_digest_to_hex(o->digest, hex);
	snprintf(o->redirect, sizeof(o->redirect), "/%.2s/%s", hex, hex + 2);
	dir = pathf("%s/%.2s", store, hex);
	(void)mkdir(dir, 0755);
	free(dir);
	o->path = pathf("%s%s", store, o->redirect);
	write_file(o->path, data, len);
	o->data = malloc(len ? len : 1);
	memcpy(o->data, data, len);
	o->size = len;
}

static void free_object(struct obj_info *o)
{
	free(o->store);
	free(o->path);
	free(o->data);
}

static char *new_store(const char *name)
{
	char *s = pathf("%s/%s", tmpdir, name);

	CHECK(mkdir(s, 0755) == 0);
	return s;
}

static struct cfs_cas *open_cas(const char *basedirs, struct cfs_cas_options *o)
{
	struct cfs_cas *cas = NULL;

	o->io = io_mode;
	CHECK_EQ(cfs_cas_open(basedirs, o, &cas), 0);
	return cas;
}

static int open_obj(struct cfs_cas *cas, const struct obj_info *o, struct cfs_object **ret)
{
	return cfs_cas_open_object(cas, o->redirect, strlen(o->redirect), o->digest, o->size, ret);
}

/* Read [off, off+len) and compare with the expected bytes. */
static ssize_t read_check(struct cfs_object *obj, const struct obj_info *o, uint64_t off, size_t len)
{
	uint8_t *buf = malloc(len ? len : 1);
	ssize_t n = cfs_object_pread(obj, buf, len, off);

	if (n >= 0) {
		size_t want = off >= o->size ? 0 : (o->size - off < len ? o->size - off : len);

		CHECK_EQ(n, want);
		CHECK(memcmp(buf, o->data + off, (size_t)n) == 0);
	}
	free(buf);
	return n;
}

static void test_known_digests(void)
{
	static const struct {
		size_t len;
		int kind;
		const char *hex;
	} vec[] = {
		{ 0, 0, "3d248ca542a24fc62d1c43b916eae5016878e2533c88238480b26128a1f1af95" },
		{ 1, 1, "bce75948b9e7510293f8f2720412af9697c1479281323f3f220623fb8e94b557" },
		{ 4096, 0, "326c3051712e1f652ccdfaa71ae780da3cccf62304fa7fb03bc7191bc833ff04" },
		{ 4097, 0, "fb00345b7ad04abc59ba8e4318de64408d8ee394ee753512546e2f2b454d71ab" },
		{ 1048577, 0, "605e9a14ed8dbd246bfe714ef2dd9bc4299ac859a5c7e31d5000d8230a9d5d29" },
		{ 128 * 4096 * 3 + 5, 0, "a78277f26f378901ee7c81c96ca2e5c91fe6da766a3d8a36d3fcb47cc6ef85d8" },
	};
	_cleanup_free_ char *store = new_store("digests");

	for (size_t i = 0; i < ARRAY_SIZE(vec); i++) {
		uint8_t *data = malloc(vec[i].len + 1), want[CFS_DIGEST_SIZE], got[CFS_DIGEST_SIZE];
		struct cfs_cas_options opts = { .verify = true, .method = CFS_METHOD_USERSPACE };
		_cleanup_(cfs_cas_unrefp) struct cfs_cas *cas = NULL;
		_cleanup_(cfs_object_unrefp) struct cfs_object *obj = NULL;
		struct obj_info o;

		for (size_t j = 0; j < vec[i].len; j++)
			data[j] = vec[i].kind ? 'a' : (uint8_t)((j * 7 + 3) & 255);
		CHECK(cfs_digest_from_hex(vec[i].hex, want) == 0);
		CHECK(cfs_fsverity_digest_mem(data, vec[i].len, got) == 0);
		CHECK(memcmp(want, got, CFS_DIGEST_SIZE) == 0);

		/* the tree built with the callbacks gives the same digest and
		 * verifies every block of the data */
		put_object(store, data, vec[i].len, &o);
		cas = open_cas(store, &opts);
		CHECK_EQ(open_obj(cas, &o, &obj), 0);
		CHECK_EQ(cfs_object_method(obj), CFS_VERIFY_USERSPACE);
		CHECK(obj->tree == NULL); /* nothing read or hashed at open */
		CHECK_EQ(read_check(obj, &o, 0, vec[i].len + 10), vec[i].len);
		CHECK_EQ(cfs_object_check_all(obj), 0);
		CHECK(memcmp(obj->tree->digest, want, CFS_DIGEST_SIZE) == 0);
		/* unaligned reads across block boundaries */
		if (vec[i].len > 5000)
			CHECK_EQ(read_check(obj, &o, 4000, 1000), 1000);
		free(data);
		free_object(&o);
	}
}

/* Buffers of 4 MiB and more are hashed by two threads: the same digest as
 * the streaming build of the same bytes from a file. */
static void test_parallel_digest(void)
{
	static const size_t sizes[] = { (4 << 20) - 1, 4 << 20, (5 << 20) + 123, (9 << 20) + 4096 };

	for (size_t i = 0; i < ARRAY_SIZE(sizes); i++) {
		_cleanup_free_ uint8_t *data = pattern(sizes[i], 50 + (unsigned)i);
		_cleanup_free_ char *path = pathf("%s/par%zu", tmpdir, i);
		uint8_t a[CFS_DIGEST_SIZE], b[CFS_DIGEST_SIZE];
		int fd;

		write_file(path, data, sizes[i]);
		fd = open(path, O_RDONLY | O_CLOEXEC);
		CHECK(fd >= 0);
		CHECK_EQ(cfs_fsverity_digest_mem(data, sizes[i], a), 0);
		CHECK_EQ(cfs_fsverity_digest_fd(fd, b), 0);
		CHECK(memcmp(a, b, CFS_DIGEST_SIZE) == 0);
		close(fd);
		unlink(path);
	}
}

/* Three-level tree (64 MiB + 1 byte, sparse): the digest of a tree with
 * upper levels, the stored leaf level read back, a wrong leaf. */
static void test_deep_tree(void)
{
	_cleanup_free_ char *store = new_store("deep");
	struct cfs_cas_options opts = { .verify = true, .method = CFS_METHOD_USERSPACE };
	_cleanup_(cfs_cas_unrefp) struct cfs_cas *cas = NULL;
	_cleanup_(cfs_object_unrefp) struct cfs_object *obj = NULL;
	_cleanup_(cfs_merkle_freep) struct cfs_merkle *back = NULL;
	uint8_t want[CFS_DIGEST_SIZE], buf[8192];
	uint64_t size = 128ULL * 128 * 4096 + 1;
	char hex[65], *dir, *path;
	struct cfs_merkle *t;
	struct cfs_cas_stats st;
	int fd, dfd;

	CHECK(cfs_digest_from_hex("4d68c6bfc7535e8fdd462db0ac8becf1a4028f2437831949455736fd86c98fef", want) == 0);
	cfs_digest_to_hex(want, hex);
	dir = pathf("%s/%.2s", store, hex);
	CHECK(mkdir(dir, 0755) == 0);
	path = pathf("%s/%s", dir, hex + 2);
	fd = open(path, O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
	CHECK(fd >= 0);
	CHECK(ftruncate(fd, (off_t)size) == 0);
	CHECK(pwrite(fd, "x", 1, (off_t)size - 1) == 1);
	close(fd);

	cas = open_cas(store, &opts);
	CHECK_EQ(cfs_cas_open_object(cas, NULL, 0, want, size, &obj), 0);
	/* larger than what is kept whole: built in one streaming pass */
	CHECK_EQ(cfs_object_pread(obj, buf, 4096, 0), 4096);
	t = obj->tree;
	CHECK(t != NULL);
	CHECK_EQ(t->data_blocks, 128 * 128 + 1);
	CHECK_EQ(cfs_merkle_bytes(t), sizeof(*t) + (128 * 128 + 1) * 32);
	cfs_cas_get_stats(cas, &st);
	CHECK_EQ(st.trees_built, 1);
	CHECK_EQ(st.bytes_read, size + 4096); /* the build, then the block read */
	CHECK_EQ(st.blocks_hashed, 128 * 128 + 1 + 1);

	/* the stored form (leaves padded to 3 blocks) reads back to the same tree */
	dfd = open(tmpdir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	CHECK(dfd >= 0);
	CHECK_EQ(cfs_tree_file_write(dfd, "deep.tree", t, 0600), 0);
	fd = openat(dfd, "deep.tree", O_RDONLY | O_CLOEXEC);
	CHECK(fd >= 0);
	CHECK_EQ(cfs_tree_file_read(fd, size, want, &back), 0);
	CHECK(memcmp(back->leaves, t->leaves, t->data_blocks * 32) == 0);
	close(fd);
	/* ... and not as the tree of another size or digest */
	fd = openat(dfd, "deep.tree", O_RDONLY | O_CLOEXEC);
	CHECK_EQ(cfs_tree_file_read(fd, size - 1, want, &back), -EBADMSG);
	want[3] ^= 1;
	CHECK_EQ(cfs_tree_file_read(fd, size, want, &back), -EBADMSG);
	want[3] ^= 1;
	close(fd);
	CHECK(unlinkat(dfd, "deep.tree", 0) == 0);
	close(dfd);

	/* a wrong leaf fails its block and only that one */
	t->leaves[5 * 128 * 32 + 3] ^= 1;
	CHECK_EQ(cfs_object_pread(obj, buf, 4096, 5 * 128 * 4096), -EIO);
	CHECK_EQ(cfs_object_pread(obj, buf, 4096, 6 * 128 * 4096), 4096);
	CHECK(buf[0] == 0 && buf[4095] == 0);
	CHECK_EQ(cfs_object_pread(obj, buf, 4096, size - 1), 1); /* last block */
	CHECK(buf[0] == 'x');
	CHECK_EQ(cfs_object_check_all(obj), -EIO);
	t->leaves[5 * 128 * 32 + 3] ^= 1;
	CHECK_EQ(cfs_object_pread(obj, buf, 4096, 5 * 128 * 4096), 4096);
	CHECK(cfs_object_check_all(obj) == 0);

	free(dir);
	free(path);
}

/* Flip one byte of an open object (first block, middle, last partial):
 * that block is refused, every other block still reads. */
static void test_corruption_after_open(void)
{
	_cleanup_free_ char *store = new_store("corrupt");
	size_t size = 40 * 4096 + 123;
	_cleanup_free_ uint8_t *data = pattern(size, 1);
	const uint64_t spots[] = { 0, 4095, 20 * 4096 + 17, size - 1, 40 * 4096 };

	for (size_t i = 0; i < ARRAY_SIZE(spots); i++) {
		struct cfs_cas_options opts = { .verify = true };
		_cleanup_(cfs_cas_unrefp) struct cfs_cas *cas = NULL;
		_cleanup_(cfs_object_unrefp) struct cfs_object *obj = NULL;
		uint64_t bad = spots[i] / 4096 * 4096;
		struct obj_info o;
		uint8_t buf[4096];

		put_object(store, data, size, &o);
		cas = open_cas(store, &opts);
		CHECK_EQ(open_obj(cas, &o, &obj), 0);
		CHECK_EQ(read_check(obj, &o, 0, size), size); /* builds the tree */
		patch_file(o.path, spots[i], 0x20);

		CHECK_EQ(read_check(obj, &o, bad, 4096), -EIO);
		CHECK_EQ(read_check(obj, &o, spots[i], 1), -EIO);
		/* a read covering it fails entirely, with the buffer cleared */
		memset(buf, 0xaa, sizeof(buf));
		CHECK_EQ(cfs_object_pread(obj, buf, 4096, bad), -EIO);
		for (size_t k = 0; k < sizeof(buf); k++)
			CHECK(buf[k] == 0xaa || buf[k] == 0);
		/* every other block is intact */
		for (uint64_t b = 0; b < size; b += 4096) {
			if (b != bad)
				CHECK(read_check(obj, &o, b, 4096) > 0);
		}
		CHECK(read_check(obj, &o, 0, size) == -EIO);
		CHECK(cfs_object_check_all(obj) == -EIO);
		{
			struct cfs_cas_stats st;

			cfs_cas_get_stats(cas, &st);
			CHECK(st.blocks_failed >= 3);
		}
		/* A fresh store sees a corrupt object: its tree cannot be
		 * built, every read fails, and the unchanged file is not read
		 * again to find that out. */
		{
			_cleanup_(cfs_cas_unrefp) struct cfs_cas *cas2 = open_cas(store, &opts);
			struct cfs_object *o2 = NULL;
			struct cfs_cas_stats st;

			CHECK_EQ(open_obj(cas2, &o, &o2), 0);
			CHECK_EQ(read_check(o2, &o, bad == 0 ? 8192 : 0, 4096), -EIO);
			CHECK_EQ(read_check(o2, &o, 0, size), -EIO);
			cfs_cas_get_stats(cas2, &st);
			CHECK_EQ(st.bytes_read, size);
			CHECK_EQ(st.trees_built, 0);
			cfs_object_unref(o2);
			/* repaired: read again, and served (a later mtime) */
			usleep(20000);
			patch_file(o.path, spots[i], 0x20);
			CHECK_EQ(open_obj(cas2, &o, &o2), 0);
			CHECK_EQ(read_check(o2, &o, 0, size), size);
			cfs_object_unref(o2);
		}
		free_object(&o);
	}
}

/* A corrupt object fails without being read again, until the store is
 * repaired by putting a good copy in its place (a new file). */
static void test_repaired_by_replacing(void)
{
	_cleanup_free_ char *store = new_store("replace");
	size_t size = 70000;
	_cleanup_free_ uint8_t *data = pattern(size, 60);
	struct cfs_cas_options opts = { .verify = true };
	_cleanup_(cfs_cas_unrefp) struct cfs_cas *cas = NULL;
	struct cfs_object *obj = NULL;
	struct cfs_cas_stats st;
	struct obj_info o;
	char *tmp;

	put_object(store, data, size, &o);
	patch_file(o.path, 1000, 0x10);
	cas = open_cas(store, &opts);
	for (int i = 0; i < 3; i++) {
		CHECK_EQ(open_obj(cas, &o, &obj), 0);
		CHECK_EQ(read_check(obj, &o, 0, 4096), -EIO);
		cfs_object_unref(obj);
	}
	cfs_cas_get_stats(cas, &st);
	CHECK_EQ(st.bytes_read, size); /* read once, not three times */
	/* repaired: a good copy renamed over it */
	tmp = pathf("%s.new", o.path);
	write_file(tmp, data, size);
	CHECK(rename(tmp, o.path) == 0);
	free(tmp);
	CHECK_EQ(open_obj(cas, &o, &obj), 0);
	CHECK_EQ(read_check(obj, &o, 0, size), size);
	cfs_object_unref(obj);
	free_object(&o);
}

/* Random ranges, small and across several 2 MiB windows, against the data. */
static void test_random_ranges(void)
{
	_cleanup_free_ char *store = new_store("ranges");
	size_t size = 6 * 1024 * 1024 + 123;
	_cleanup_free_ uint8_t *data = pattern(size, 8);
	struct cfs_cas_options opts = { .verify = true };
	_cleanup_(cfs_cas_unrefp) struct cfs_cas *cas = NULL;
	_cleanup_(cfs_object_unrefp) struct cfs_object *obj = NULL;
	unsigned seed = 12345;
	struct obj_info o;

	put_object(store, data, size, &o);
	cas = open_cas(store, &opts);
	CHECK_EQ(open_obj(cas, &o, &obj), 0);
	for (int i = 0; i < 300; i++) {
		uint64_t off = (uint64_t)rand_r(&seed) % (size + 5000);
		size_t len = i % 10 == 0 ? (size_t)rand_r(&seed) % (5 * 1024 * 1024)
					 : (size_t)rand_r(&seed) % 300000;
		size_t want = off >= size ? 0 : (size - off < len ? size - off : len);

		CHECK_EQ(read_check(obj, &o, off, len), want);
	}
	CHECK_EQ(read_check(obj, &o, 0, size), size);
	CHECK_EQ(read_check(obj, &o, size, 10), 0);
	CHECK_EQ(read_check(obj, &o, 5, 0), 0);
	free_object(&o);
}

static void test_truncate_extend(void)
{
	_cleanup_free_ char *store = new_store("trunc");
	size_t size = 10 * 4096 + 100;
	_cleanup_free_ uint8_t *data = pattern(size, 2);
	struct cfs_cas_options opts = { .verify = true };
	struct obj_info o;

	put_object(store, data, size, &o);
	{
		_cleanup_(cfs_cas_unrefp) struct cfs_cas *cas = open_cas(store, &opts);
		_cleanup_(cfs_object_unrefp) struct cfs_object *obj = NULL;

		CHECK_EQ(open_obj(cas, &o, &obj), 0);
		CHECK_EQ(read_check(obj, &o, 0, 4096), 4096); /* the tree, from the data */
		/* extended after open: the last block comes back too long */
		CHECK(truncate(o.path, (off_t)size + 10) == 0);
		CHECK_EQ(read_check(obj, &o, 10 * 4096, 100), -EIO);
		CHECK_EQ(read_check(obj, &o, 0, 4096), 4096);
		/* truncated after open: blocks past the end are short reads */
		CHECK(truncate(o.path, 5 * 4096 + 10) == 0);
		CHECK_EQ(read_check(obj, &o, 6 * 4096, 4096), -EIO);
		CHECK_EQ(read_check(obj, &o, 5 * 4096, 4096), -EIO);
		CHECK_EQ(read_check(obj, &o, 0, 5 * 4096), 5 * 4096);
	}
	{
		/* size differs from the image: refused at open, both ways */
		_cleanup_(cfs_cas_unrefp) struct cfs_cas *cas = open_cas(store, &opts);
		struct cfs_object *obj = NULL;

		CHECK_EQ(open_obj(cas, &o, &obj), -EIO);
		CHECK(truncate(o.path, (off_t)size + 1) == 0);
		CHECK_EQ(open_obj(cas, &o, &obj), -EIO);
		CHECK(truncate(o.path, (off_t)size) == 0);
		/* the size is right again, the content not: the last byte is 0 */
		CHECK_EQ(open_obj(cas, &o, &obj), 0);
		CHECK_EQ(read_check(obj, &o, 0, 4096), -EIO);
		cfs_object_unref(obj);
	}
	free_object(&o);
}

static void test_paths(bool use_openat2)
{
	_cleanup_free_ char *store = new_store(use_openat2 ? "paths2" : "paths1");
	_cleanup_free_ uint8_t *data = pattern(5000, 3);
	struct cfs_cas_options opts = { .verify = true };
	_cleanup_(cfs_cas_unrefp) struct cfs_cas *cas = NULL;
	struct cfs_object *obj = NULL;
	struct obj_info o;
	char *p, hex[65];
	static const char *bad[] = {
		"/../../etc/passwd", "../etc/passwd", "ab/../../etc/passwd", "//etc/passwd",
		"ab//cd", "ab/./cd", "/", "", "ab/", "/ab/cd/..",
	};

	put_object(store, data, 5000, &o);
	cas = open_cas(store, &opts);
	cas->have_openat2 = use_openat2;
	for (size_t i = 0; i < ARRAY_SIZE(bad); i++)
		CHECK_EQ(cfs_cas_open_object(cas, bad[i], strlen(bad[i]), NULL, 5000, &obj), -EPERM);
	/* NUL inside the redirect */
	CHECK_EQ(cfs_cas_open_object(cas, "ab\0cd", 5, NULL, 5000, &obj), -EPERM);

	/* an absolute symlink inside the store pointing out of it */
	p = pathf("%s/zz", store);
	CHECK(symlink("/etc", p) == 0);
	CHECK_EQ(cfs_cas_open_object(cas, "/zz/passwd", 10, NULL, 5000, &obj), -EPERM);
	free(p);
	/* a relative symlink directory to somewhere inside the store */
	cfs_digest_to_hex(o.digest, hex);
	p = pathf("%s/yy", store);
	CHECK(symlink((char[]){ hex[0], hex[1], 0 }, p) == 0);
	{
		char *r = pathf("yy/%s", hex + 2);

		CHECK_EQ(cfs_cas_open_object(cas, r, strlen(r), NULL, 5000, &obj), -EPERM);
		free(r);
	}
	free(p);
	/* a symlinked object */
	{
		char *target = pathf("%s", o.path), *link = pathf("%s/%.2s/link", store, hex);

		CHECK(symlink(target, link) == 0);
		{
			char *r = pathf("%.2s/link", hex);

			CHECK_EQ(cfs_cas_open_object(cas, r, strlen(r), NULL, 5000, &obj), -EPERM);
			free(r);
		}
		free(target);
		free(link);
	}
	/* a directory, a FIFO (must not block) */
	{
		char *d = pathf("%s/dd", store), *f = pathf("%s/dd/fifo", store);

		CHECK(mkdir(d, 0755) == 0);
		CHECK(mkfifo(f, 0644) == 0);
		CHECK_EQ(cfs_cas_open_object(cas, "dd", 2, NULL, 0, &obj), -EPERM);
		CHECK_EQ(cfs_cas_open_object(cas, "dd/fifo", 7, NULL, 0, &obj), -EPERM);
		free(d);
		free(f);
	}
	/* missing, disagreeing digest */
	CHECK_EQ(cfs_cas_open_object(cas, "ab/cd", 5, NULL, 0, &obj), -ENOENT);
	{
		uint8_t other[CFS_DIGEST_SIZE];

		memcpy(other, o.digest, sizeof(other));
		other[31] ^= 1;
		CHECK_EQ(cfs_cas_open_object(cas, o.redirect, strlen(o.redirect), other, 5000, &obj), -EINVAL);
		CHECK_EQ(cfs_cas_open_object(cas, "ab/cd", 5, o.digest, 5000, &obj), -EINVAL);
	}
	/* the good one, with and without the leading '/', and by digest */
	CHECK_EQ(cfs_cas_open_object(cas, o.redirect + 1, strlen(o.redirect) - 1, o.digest, 5000, &obj), 0);
	CHECK_EQ(read_check(obj, &o, 0, 5000), 5000);
	{
		struct cfs_object *same = NULL, *same2 = NULL;

		CHECK_EQ(open_obj(cas, &o, &same), 0);
		CHECK_EQ(cfs_cas_open_object(cas, NULL, 0, o.digest, 5000, &same2), 0);
		CHECK(same == obj && same2 == obj);
		/* the same path with another size is not this object */
		CHECK_EQ(cfs_cas_open_object(cas, NULL, 0, o.digest, 4999, &same), -EIO);
		cfs_object_unref(same2);
		cfs_object_unref(obj);
		cfs_object_unref(obj);
	}
	CHECK_EQ(cas->have_openat2, use_openat2);
	free_object(&o);
}

/* Stand-in for FS_IOC_MEASURE_VERITY. */
struct fake {
	uint8_t digest[CFS_DIGEST_SIZE];
	int error;
	int calls;
};

static int fake_measure(void *userdata, int fd, uint8_t ret[CFS_DIGEST_SIZE])
{
	struct fake *f = userdata;

	f->calls++;
	if (f->error)
		return -f->error;
	memcpy(ret, f->digest, CFS_DIGEST_SIZE);
	return 0;
}

static void test_kernel_method(void)
{
	_cleanup_free_ char *store = new_store("kernel");
	_cleanup_free_ uint8_t *data = pattern(3 * 4096 + 7, 4);
	struct fake f = { 0 };
	struct cfs_verity_ops ops = { .measure = fake_measure, .userdata = &f };
	struct obj_info o;

	put_object(store, data, 3 * 4096 + 7, &o);
	for (int mode = 0; mode < 4; mode++) {
		struct cfs_cas_options opts = { .verify = true, .verity = &ops };
		_cleanup_(cfs_cas_unrefp) struct cfs_cas *cas = NULL;
		struct cfs_object *obj = NULL;
		int r;

		memset(&f, 0, sizeof(f));
		if (mode == 0) {
			/* kernel verity enabled, right digest */
			memcpy(f.digest, o.digest, CFS_DIGEST_SIZE);
		} else if (mode == 1) {
			/* enabled with another digest: refused */
			memcpy(f.digest, o.digest, CFS_DIGEST_SIZE);
			f.digest[0] ^= 1;
		} else {
			f.error = ENODATA; /* not enabled on this file */
			if (mode == 3)
				opts.method = CFS_METHOD_KERNEL;
		}
		cas = open_cas(store, &opts);
		r = open_obj(cas, &o, &obj);
		CHECK_EQ(f.calls, 1);
		switch (mode) {
		case 0:
			CHECK_EQ(r, 0);
			CHECK_EQ(cfs_object_method(obj), CFS_VERIFY_KERNEL);
			CHECK(obj->tree == NULL);
			CHECK_EQ(read_check(obj, &o, 4000, 9000), 3 * 4096 + 7 - 4000);
			break;
		case 1:
			CHECK_EQ(r, -EIO);
			break;
		case 2:
			CHECK_EQ(r, 0);
			CHECK_EQ(cfs_object_method(obj), CFS_VERIFY_USERSPACE);
			break;
		case 3:
			CHECK_EQ(r, -ENODATA);
			break;
		}
		cfs_object_unref(obj);
	}
	{
		/* forced userspace never asks the kernel */
		struct cfs_cas_options opts = { .verify = true, .verity = &ops, .method = CFS_METHOD_USERSPACE };
		_cleanup_(cfs_cas_unrefp) struct cfs_cas *cas = open_cas(store, &opts);
		_cleanup_(cfs_object_unrefp) struct cfs_object *obj = NULL;

		memset(&f, 0, sizeof(f));
		CHECK_EQ(open_obj(cas, &o, &obj), 0);
		CHECK_EQ(f.calls, 0);
		CHECK_EQ(cfs_object_method(obj), CFS_VERIFY_USERSPACE);
	}
	{
		/* the real ioctl on this filesystem: not enabled/not supported */
		int fd = open(o.path, O_RDONLY | O_CLOEXEC);
		uint8_t d[CFS_DIGEST_SIZE];
		int r;

		CHECK(fd >= 0);
		r = cfs_verity_kernel_ops.measure(NULL, fd, d);
		CHECK(r == -ENODATA || r == -EOPNOTSUPP || r == -ENOTTY);
		close(fd);
	}
	free_object(&o);
}

/* A fake that knows per file (by inode) what the kernel would say. */
struct per_file_fake {
	ino_t ino[2];
	uint8_t digest[2][CFS_DIGEST_SIZE];
};

static int per_file_measure(void *userdata, int fd, uint8_t ret[CFS_DIGEST_SIZE])
{
	struct per_file_fake *f = userdata;
	struct stat st;

	CHECK(fstat(fd, &st) == 0);
	for (int i = 0; i < 2; i++) {
		if (st.st_ino == f->ino[i]) {
			memcpy(ret, f->digest[i], CFS_DIGEST_SIZE);
			return 0;
		}
	}
	return -ENODATA;
}

static void test_kernel_method_per_file(void)
{
	_cleanup_free_ char *store = new_store("kernel-mixed");
	struct per_file_fake f;
	struct cfs_verity_ops ops = { .measure = per_file_measure, .userdata = &f };
	struct cfs_cas_options opts = { .verify = true, .verity = &ops };
	_cleanup_(cfs_cas_unrefp) struct cfs_cas *cas = NULL;
	struct obj_info o[3];
	struct cfs_object *obj[3] = { NULL };
	struct stat st;

	for (int i = 0; i < 3; i++) {
		uint8_t *d = pattern(5 * 4096 + (size_t)i, 30 + (unsigned)i);

		put_object(store, d, 5 * 4096 + (size_t)i, &o[i]);
		free(d);
	}
	/* object 0: verity enabled with its digest (computed by libfsverity);
	 * object 1: verity enabled but measuring another digest; object 2:
	 * verity not enabled. */
	for (int i = 0; i < 2; i++) {
		CHECK(stat(o[i].path, &st) == 0);
		f.ino[i] = st.st_ino;
		memcpy(f.digest[i], o[i].digest, CFS_DIGEST_SIZE);
	}
	f.digest[1][17] ^= 0x10;
	cas = open_cas(store, &opts);
	CHECK_EQ(open_obj(cas, &o[0], &obj[0]), 0);
	CHECK_EQ(cfs_object_method(obj[0]), CFS_VERIFY_KERNEL);
	CHECK_EQ(open_obj(cas, &o[1], &obj[1]), -EIO);
	CHECK_EQ(open_obj(cas, &o[2], &obj[2]), 0);
	CHECK_EQ(cfs_object_method(obj[2]), CFS_VERIFY_USERSPACE);
	CHECK_EQ(read_check(obj[0], &o[0], 0, 5 * 4096), 5 * 4096);
	CHECK_EQ(read_check(obj[2], &o[2], 0, 5 * 4096 + 2), 5 * 4096 + 2);
	CHECK_EQ(cfs_object_check_all(obj[0]), 0); /* reads it all through the kernel */
	cfs_object_unref(obj[0]);
	cfs_object_unref(obj[2]);
	for (int i = 0; i < 3; i++)
		free_object(&o[i]);
}

static void test_no_digest_and_off(void)
{
	_cleanup_free_ char *store = new_store("nodigest");
	_cleanup_free_ uint8_t *data = pattern(9000, 5);
	struct obj_info o;

	put_object(store, data, 9000, &o);
	{
		struct cfs_cas_options opts = { .verify = true };
		_cleanup_(cfs_cas_unrefp) struct cfs_cas *cas = open_cas(store, &opts);
		_cleanup_(cfs_object_unrefp) struct cfs_object *obj = NULL;

		CHECK_EQ(cfs_cas_open_object(cas, o.redirect, strlen(o.redirect), NULL, 9000, &obj), 0);
		CHECK_EQ(cfs_object_method(obj), CFS_VERIFY_OFF);
		CHECK_EQ(read_check(obj, &o, 0, 9000), 9000);
		{
			/* with a digest it is a different state: verified */
			_cleanup_(cfs_object_unrefp) struct cfs_object *v = NULL;

			CHECK_EQ(open_obj(cas, &o, &v), 0);
			CHECK(v != obj);
			CHECK_EQ(cfs_object_method(v), CFS_VERIFY_USERSPACE);
		}
	}
	{
		struct cfs_cas_options opts = { .verify = true, .require_digest = true };
		_cleanup_(cfs_cas_unrefp) struct cfs_cas *cas = open_cas(store, &opts);
		struct cfs_object *obj = NULL;

		CHECK_EQ(cfs_cas_open_object(cas, o.redirect, strlen(o.redirect), NULL, 9000, &obj), -ENOKEY);
	}
	{
		struct cfs_cas_options opts = { .verify = false };
		_cleanup_(cfs_cas_unrefp) struct cfs_cas *cas = open_cas(store, &opts);
		_cleanup_(cfs_object_unrefp) struct cfs_object *obj = NULL;

		patch_file(o.path, 5000, 1);
		CHECK_EQ(open_obj(cas, &o, &obj), 0);
		CHECK_EQ(cfs_object_method(obj), CFS_VERIFY_OFF);
		o.data[5000] ^= 1;
		CHECK_EQ(read_check(obj, &o, 0, 9000), 9000); /* unverified, as asked */
	}
	free_object(&o);
}

static void test_tree_cache(void)
{
	_cleanup_free_ char *store = new_store("tc-store");
	_cleanup_free_ char *cache = pathf("%s/tc-cache/sub", tmpdir);
	size_t size = 300 * 4096 + 11;
	_cleanup_free_ uint8_t *data = pattern(size, 6);
	struct cfs_cas_options opts = { .verify = true, .tree_cache_dir = cache, .tree_cache_min_size = 1 };
	struct cfs_cas_stats st;
	struct obj_info o;
	char hex[65], *cfile;
	struct stat sb;

	put_object(store, data, size, &o);
	cfs_digest_to_hex(o.digest, hex);
	cfile = pathf("%s/%s", cache, hex);
	{
		_cleanup_(cfs_cas_unrefp) struct cfs_cas *cas = open_cas(store, &opts);
		struct cfs_object *obj = NULL;

		CHECK_EQ(open_obj(cas, &o, &obj), 0);
		cfs_cas_get_stats(cas, &st);
		CHECK_EQ(st.trees_built, 0); /* nothing at open */
		CHECK_EQ(read_check(obj, &o, 0, 4096), 4096);
		cfs_cas_get_stats(cas, &st);
		CHECK_EQ(st.trees_built, 1);
		CHECK_EQ(st.trees_written, 1);
		CHECK(stat(cfile, &sb) == 0);
		CHECK_EQ(sb.st_size, 64 + 3 * 4096); /* header + leaf level */
		CHECK_EQ(sb.st_mode & 0777, 0600);
		cfs_object_unref(obj);
		/* kept open while idle: the next open costs nothing */
		CHECK_EQ(open_obj(cas, &o, &obj), 0);
		CHECK(obj->tree != NULL);
		cfs_object_unref(obj);
		cfs_cas_get_stats(cas, &st);
		CHECK_EQ(st.objects_opened, 1);
		CHECK_EQ(st.idle_objects, 1);
		/* closed: its tree waits in the memory LRU */
		pthread_mutex_lock(&cas->lock);
		cfs_cas_trim_idle(cas, 0);
		pthread_mutex_unlock(&cas->lock);
		cfs_cas_get_stats(cas, &st);
		CHECK_EQ(st.idle_objects, 0);
		CHECK_EQ(st.lru_bytes, sizeof(struct cfs_merkle) + 301 * 32);
		CHECK_EQ(open_obj(cas, &o, &obj), 0);
		cfs_cas_get_stats(cas, &st);
		CHECK_EQ(st.trees_from_memory, 1);
		CHECK_EQ(st.trees_built, 1);
		CHECK_EQ(st.objects_opened, 2);
		cfs_object_unref(obj);
	}
	{
		/* new store: the persisted tree is used; data corruption is
		 * then caught per block */
		_cleanup_(cfs_cas_unrefp) struct cfs_cas *cas = open_cas(store, &opts);
		_cleanup_(cfs_object_unrefp) struct cfs_object *obj = NULL;

		patch_file(o.path, 100 * 4096 + 5, 4);
		CHECK_EQ(open_obj(cas, &o, &obj), 0);
		CHECK_EQ(read_check(obj, &o, 100 * 4096, 4096), -EIO);
		cfs_cas_get_stats(cas, &st);
		CHECK_EQ(st.trees_from_disk, 1);
		CHECK_EQ(st.trees_built, 0);
		CHECK_EQ(read_check(obj, &o, 99 * 4096, 4096), 4096);
		CHECK_EQ(read_check(obj, &o, 101 * 4096, size - 101 * 4096), size - 101 * 4096);
		CHECK_EQ(cfs_object_check_all(obj), -EIO);
		patch_file(o.path, 100 * 4096 + 5, 4);
		CHECK_EQ(cfs_object_check_all(obj), 0);
	}
	/* any corrupt byte of the cache file: discarded and rebuilt */
	{
		const uint64_t spots[] = { 0, 20, 40, 63, 64, 64 + 4096 + 9, 64 + 3 * 4096 - 1 };

		for (size_t i = 0; i < ARRAY_SIZE(spots); i++) {
			_cleanup_(cfs_cas_unrefp) struct cfs_cas *cas = open_cas(store, &opts);
			_cleanup_(cfs_object_unrefp) struct cfs_object *obj = NULL;

			patch_file(cfile, spots[i], 0x01);
			CHECK_EQ(open_obj(cas, &o, &obj), 0);
			CHECK_EQ(read_check(obj, &o, 0, size), size);
			cfs_cas_get_stats(cas, &st);
			CHECK_EQ(st.trees_rejected, 1);
			CHECK_EQ(st.trees_built, 1);
			CHECK_EQ(st.trees_written, 1);
		}
		/* truncated and extended cache files, a symlink in its place */
		for (int k = 0; k < 3; k++) {
			_cleanup_(cfs_cas_unrefp) struct cfs_cas *cas = open_cas(store, &opts);
			_cleanup_(cfs_object_unrefp) struct cfs_object *obj = NULL;

			if (k == 2) {
				char *other = pathf("%s/elsewhere", tmpdir);

				CHECK(rename(cfile, other) == 0);
				CHECK(symlink(other, cfile) == 0);
				free(other);
			} else {
				CHECK(truncate(cfile, k == 0 ? 64 + 4096 : 64 + 4 * 4096) == 0);
			}
			CHECK_EQ(open_obj(cas, &o, &obj), 0);
			CHECK_EQ(read_check(obj, &o, 0, 4096), 4096);
			cfs_cas_get_stats(cas, &st);
			CHECK_EQ(st.trees_from_disk, 0);
			CHECK_EQ(st.trees_built, 1);
		}
	}
	{
		/* a cache directory inside the store is refused */
		_cleanup_free_ char *inside = pathf("%s/cache", store);
		struct cfs_cas_options bad = { .verify = true, .tree_cache_dir = inside };
		struct cfs_cas *cas = NULL;

		CHECK_EQ(cfs_cas_open(store, &bad, &cas), -EXDEV);
	}
	free(cfile);
	free_object(&o);
}

static void test_lru_bound(void)
{
	_cleanup_free_ char *store = new_store("lru");
	/* one idle object; room for one closed object's tree */
	struct cfs_cas_options opts = { .verify = true, .max_idle_objects = 1,
					.tree_cache_bytes = sizeof(struct cfs_merkle) + 200 * 32 + 100 };
	_cleanup_(cfs_cas_unrefp) struct cfs_cas *cas = NULL;
	struct obj_info o[4];
	struct cfs_cas_stats st;

	for (int i = 0; i < 4; i++) {
		uint8_t *d = pattern(200 * 4096, 10 + (unsigned)i);

		put_object(store, d, 200 * 4096, &o[i]);
		free(d);
	}
	cas = open_cas(store, &opts);
	for (int i = 0; i < 4; i++) {
		struct cfs_object *obj = NULL;

		CHECK_EQ(open_obj(cas, &o[i], &obj), 0);
		CHECK_EQ(read_check(obj, &o[i], 0, 4096), 4096);
		cfs_object_unref(obj);
		cfs_cas_get_stats(cas, &st);
		CHECK(st.lru_bytes <= opts.tree_cache_bytes);
		CHECK_EQ(st.idle_objects, 1);
	}
	cfs_cas_get_stats(cas, &st);
	CHECK_EQ(st.objects_evicted, 3);
	{
		struct cfs_object *obj = NULL;

		/* 3 is idle, 2's tree is in the LRU, 0's and 1's are gone */
		CHECK_EQ(open_obj(cas, &o[3], &obj), 0);
		CHECK_EQ(read_check(obj, &o[3], 0, 4096), 4096);
		cfs_object_unref(obj);
		CHECK_EQ(open_obj(cas, &o[2], &obj), 0);
		CHECK_EQ(read_check(obj, &o[2], 0, 4096), 4096);
		cfs_object_unref(obj);
		CHECK_EQ(open_obj(cas, &o[0], &obj), 0);
		CHECK_EQ(read_check(obj, &o[0], 0, 4096), 4096);
		cfs_object_unref(obj);
		cfs_cas_get_stats(cas, &st);
		CHECK_EQ(st.trees_from_memory, 1);
		CHECK_EQ(st.trees_built, 5);
	}
	for (int i = 0; i < 4; i++)
		free_object(&o[i]);
}

/* Trees stored beside the objects (as mkcomposefs --digest-store and
 * composefs-info verify write them): used when they check out, ignored
 * (and left alone) when they do not; and the whole object is read and
 * hashed once when there is none. */
static void test_store_trees(void)
{
	_cleanup_free_ char *store = new_store("stree");
	size_t size = 1048577;
	_cleanup_free_ uint8_t *data = pattern(size, 40);
	struct cfs_cas_options opts = { .verify = true, .store_trees = true };
	struct cfs_cas_stats st;
	struct obj_info o;
	char name[80], hex[65], *tfile;
	struct stat sb;

	put_object(store, data, size, &o);
	cfs_digest_to_hex(o.digest, hex);
	snprintf(name, sizeof(name), "%s/%.2s/%s", CFS_STORE_TREES_DIR, hex, hex + 2);
	tfile = pathf("%s/%s", store, name);
	{
		/* no tree anywhere: one pass reads and hashes it, and the
		 * verified copy comes back whole */
		_cleanup_(cfs_cas_unrefp) struct cfs_cas *cas = open_cas(store, &opts);
		_cleanup_(cfs_object_unrefp) struct cfs_object *obj = NULL;
		uint8_t *buf = malloc(131072);
		void *whole = NULL;

		CHECK_EQ(open_obj(cas, &o, &obj), 0);
		CHECK_EQ(cfs_object_pread_whole(obj, buf, 131072, 0, &whole, NULL), 131072);
		CHECK(whole != NULL && memcmp(whole, data, size) == 0);
		CHECK(memcmp(buf, data, 131072) == 0);
		free(whole);
		cfs_cas_get_stats(cas, &st);
		CHECK_EQ(st.bytes_read, size);
		CHECK_EQ(st.blocks_hashed, 257);
		CHECK_EQ(st.trees_built, 1);
		CHECK_EQ(st.trees_written, 1); /* into the store: store_trees */
		CHECK(stat(tfile, &sb) == 0);
		CHECK_EQ(sb.st_mode & 0777, 0644);
		/* then block by block */
		CHECK_EQ(cfs_object_pread_whole(obj, buf, 4096, 8192, &whole, NULL), 4096);
		CHECK(whole == NULL);
		free(buf);
	}
	{
		/* the daemon's way: the stored tree is found and checked */
		struct cfs_cas_options ro = { .verify = true };
		_cleanup_(cfs_cas_unrefp) struct cfs_cas *cas = open_cas(store, &ro);
		_cleanup_(cfs_object_unrefp) struct cfs_object *obj = NULL;

		CHECK_EQ(open_obj(cas, &o, &obj), 0);
		CHECK_EQ(read_check(obj, &o, 4096, 4096), 4096);
		cfs_cas_get_stats(cas, &st);
		CHECK_EQ(st.trees_from_store, 1);
		CHECK_EQ(st.trees_built, 0);
		CHECK_EQ(st.bytes_read, 4096);
	}
	{
		/* a corrupt stored tree is not used, not removed, and the tree is
		 * rebuilt from the data */
		struct cfs_cas_options ro = { .verify = true };
		_cleanup_(cfs_cas_unrefp) struct cfs_cas *cas = open_cas(store, &ro);
		_cleanup_(cfs_object_unrefp) struct cfs_object *obj = NULL;

		patch_file(tfile, 64 + 32 * 7, 1);
		CHECK_EQ(open_obj(cas, &o, &obj), 0);
		CHECK_EQ(read_check(obj, &o, 0, size), size);
		cfs_cas_get_stats(cas, &st);
		CHECK_EQ(st.trees_from_store, 0);
		CHECK_EQ(st.trees_rejected, 1);
		CHECK_EQ(st.trees_built, 1);
		CHECK(stat(tfile, &sb) == 0);
	}
	{
		/* a stored tree that is another object's */
		struct cfs_cas_options ro = { .verify = true };
		_cleanup_(cfs_cas_unrefp) struct cfs_cas *cas = open_cas(store, &ro);
		_cleanup_(cfs_object_unrefp) struct cfs_object *obj = NULL;
		_cleanup_(cfs_merkle_freep) struct cfs_merkle *t = NULL;
		uint8_t *other = pattern(size, 41);
		char *opath = pathf("%s/other", tmpdir);
		int fd, sfd;

		write_file(opath, other, size);
		fd = open(opath, O_RDONLY | O_CLOEXEC);
		CHECK_EQ(cfs_merkle_build_fd(&cas->io, fd, size, NULL, NULL, &t), 0);
		close(fd);
		memcpy(t->digest, o.digest, CFS_DIGEST_SIZE); /* claims to be o's */
		sfd = open(store, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
		CHECK_EQ(cfs_store_tree_write(sfd, t, 0), 1);
		close(sfd);
		CHECK_EQ(open_obj(cas, &o, &obj), 0);
		CHECK_EQ(read_check(obj, &o, 0, size), size);
		cfs_cas_get_stats(cas, &st);
		CHECK_EQ(st.trees_rejected, 1);
		CHECK_EQ(st.trees_built, 1);
		free(other);
		unlink(opath);
		free(opath);
	}
	free(tfile);
	free_object(&o);
}

static void test_basedirs(void)
{
	_cleanup_free_ char *a = new_store("base-a");
	_cleanup_free_ char *b = new_store("base-b");
	_cleanup_free_ uint8_t *data = pattern(4097, 7);
	_cleanup_free_ char *both = pathf("%s:%s", a, b);
	struct cfs_cas_options opts = { .verify = true };
	_cleanup_(cfs_cas_unrefp) struct cfs_cas *cas = NULL;
	_cleanup_(cfs_object_unrefp) struct cfs_object *obj = NULL;
	struct cfs_cas *bad = NULL;
	struct obj_info o;

	put_object(b, data, 4097, &o);
	cas = open_cas(both, &opts);
	CHECK_EQ(open_obj(cas, &o, &obj), 0);
	CHECK_EQ(read_check(obj, &o, 0, 5000), 4097);
	{
		_cleanup_free_ char *empty = pathf("%s::%s", a, b);
		_cleanup_free_ char *missing = pathf("%s:%s/nope", a, b);

		CHECK_EQ(cfs_cas_open(empty, &opts, &bad), -EINVAL);
		CHECK_EQ(cfs_cas_open(missing, &opts, &bad), -ENOENT);
	}
	free_object(&o);
}

/* Many threads open the same objects and read them concurrently. */
struct mt_arg {
	struct cfs_cas *cas;
	struct obj_info *objs;
	int nobjs;
	struct cfs_object *seen[8];
};

static void *mt_worker(void *p)
{
	struct mt_arg *a = p;

	for (int round = 0; round < 20; round++) {
		for (int i = 0; i < a->nobjs; i++) {
			struct cfs_object *obj = NULL;

			CHECK_EQ(open_obj(a->cas, &a->objs[i], &obj), 0);
			if (round == 0)
				a->seen[i] = obj;
			for (uint64_t off = (uint64_t)round * 1000; off < a->objs[i].size; off += 50000)
				CHECK(read_check(obj, &a->objs[i], off, 70000) > 0);
			if (round == 0)
				continue; /* keep the first reference so states stay shared */
			cfs_object_unref(obj);
		}
	}
	return NULL;
}

static void test_threads(void)
{
	_cleanup_free_ char *store = new_store("mt");
	struct cfs_cas_options opts = { .verify = true };
	_cleanup_(cfs_cas_unrefp) struct cfs_cas *cas = NULL;
	struct obj_info objs[3];
	struct mt_arg args[4];
	pthread_t th[4];
	struct cfs_cas_stats st;

	for (int i = 0; i < 3; i++) {
		uint8_t *d = pattern(300000 + (size_t)i * 77777, 20 + (unsigned)i);

		put_object(store, d, 300000 + (size_t)i * 77777, &objs[i]);
		free(d);
	}
	cas = open_cas(store, &opts);
	for (int t = 0; t < 4; t++) {
		args[t] = (struct mt_arg){ .cas = cas, .objs = objs, .nobjs = 3 };
		CHECK(pthread_create(&th[t], NULL, mt_worker, &args[t]) == 0);
	}
	for (int t = 0; t < 4; t++)
		CHECK(pthread_join(th[t], NULL) == 0);
	for (int i = 0; i < 3; i++) {
		for (int t = 1; t < 4; t++)
			CHECK(args[t].seen[i] == args[0].seen[i]);
	}
	cfs_cas_get_stats(cas, &st);
	CHECK_EQ(st.objects_opened, 3);
	CHECK_EQ(st.trees_built, 3);
	for (int t = 0; t < 4; t++) {
		for (int i = 0; i < 3; i++)
			cfs_object_unref(args[t].seen[i]);
	}
	for (int i = 0; i < 3; i++)
		free_object(&objs[i]);
}

static void test_default_dir(void)
{
	char *d = NULL;

	setenv("XDG_CACHE_HOME", "/x/cache", 1);
	CHECK_EQ(cfs_tree_cache_default_dir(&d), 0);
	CHECK(strcmp(d, "/x/cache/composefs-fuse") == 0);
	free(d);
	setenv("XDG_CACHE_HOME", "relative", 1);
	setenv("HOME", "/home/u", 1);
	CHECK_EQ(cfs_tree_cache_default_dir(&d), 0);
	CHECK(strcmp(d, "/home/u/.cache/composefs-fuse") == 0);
	free(d);
	unsetenv("XDG_CACHE_HOME");
	{
		/* No HOME, or one that is another user's existing directory
		 * (mount.fuse3 passes HOME=/root): the passwd entry's home. */
		struct passwd *pw = getpwuid(geteuid());
		char want[PATH_MAX], other[] = "/tmp/cfs-home-XXXXXX";

		CHECK(pw && pw->pw_dir[0] == '/');
		snprintf(want, sizeof(want), "%s/.cache/composefs-fuse", pw->pw_dir);
		unsetenv("HOME");
		CHECK_EQ(cfs_tree_cache_default_dir(&d), 0);
		CHECK(strcmp(d, want) == 0);
		free(d);
		CHECK(mkdtemp(other) != NULL);
		setenv("HOME", other, 1);
		CHECK_EQ(cfs_tree_cache_default_dir(&d), 0); /* our own directory */
		CHECK(strncmp(d, other, strlen(other)) == 0);
		free(d);
		if (geteuid() == 0) {
			CHECK_EQ(chown(other, 65534, 65534), 0);
			CHECK_EQ(cfs_tree_cache_default_dir(&d), 0);
			CHECK(strcmp(d, want) == 0);
			free(d);
		}
		rmdir(other);
		unsetenv("HOME");
	}
}

/* A read on a thread whose ring a live sequential reader holds (its
 * read-ahead in flight) gets its own data, and the sequential reader gets
 * its own afterwards: completions never go to the wrong reader.  Taking
 * exactly one read-ahead chunk makes the reader queue the next at once, so
 * a read of it is in flight when the other read starts. */
struct seg_check {
	const uint8_t *want;
	unsigned done;
};

static int seg_check_done(void *userdata, struct cfs_io_seg *seg)
{
	struct seg_check *c = userdata;

	CHECK_EQ(seg->res, seg->len);
	CHECK(memcmp(seg->buf, c->want + seg->off, seg->len) == 0);
	c->done++;
	return 0;
}

static void test_io_two_readers_one_thread(void)
{
	size_t alen = 3 << 20, blen = 256 << 10, chunk = 256 << 10;
	uint8_t *a = pattern(alen, 31), *b = pattern(blen, 32), *got = malloc(alen);
	char *pa = pathf("%s/io-a", tmpdir), *pb = pathf("%s/io-b", tmpdir);
	struct cfs_io_seg segs[4];
	struct seg_check c = { .want = b };
	struct cfs_seqreader *sr = NULL;
	struct cfs_io io;
	int fa, fb;

	CHECK(got);
	write_file(pa, a, alen);
	write_file(pb, b, blen);
	fa = open(pa, O_RDONLY | O_CLOEXEC);
	fb = open(pb, O_RDONLY | O_CLOEXEC);
	CHECK(fa >= 0 && fb >= 0);
	CHECK_EQ(cfs_io_init(&io, io_mode), 0);
	CHECK_EQ(cfs_seqreader_new(&io, fa, alen, &sr), 0);
	CHECK_EQ(cfs_seqreader_read(sr, got, chunk), 0);
	for (unsigned i = 0; i < 4; i++) {
		segs[i] = (struct cfs_io_seg){ .buf = malloc(blen / 4), .off = i * (blen / 4),
					       .len = (uint32_t)(blen / 4) };
		CHECK(segs[i].buf);
	}
	CHECK_EQ(cfs_io_read_segs(&io, fb, segs, 4, seg_check_done, &c), 0);
	CHECK_EQ(c.done, 4);
	CHECK_EQ(cfs_seqreader_read(sr, got + chunk, alen - chunk), 0);
	CHECK_EQ(cfs_seqreader_check_eof(sr), 0);
	CHECK(memcmp(got, a, alen) == 0);
	cfs_seqreader_free(sr);
	/* the ring is free again: a read after it works as before */
	c.done = 0;
	CHECK_EQ(cfs_io_read_segs(&io, fb, segs, 4, seg_check_done, &c), 0);
	CHECK_EQ(c.done, 4);
	for (unsigned i = 0; i < 4; i++)
		free(segs[i].buf);
	cfs_io_fini(&io);
	close(fa);
	close(fb);
	unlink(pa);
	unlink(pb);
	free(pa);
	free(pb);
	free(a);
	free(b);
	free(got);
}

static void run_all(void)
{
	test_known_digests();
	test_parallel_digest();
	test_deep_tree();
	test_corruption_after_open();
	test_repaired_by_replacing();
	test_random_ranges();
	test_truncate_extend();
	test_paths(true);
	test_paths(false);
	test_kernel_method();
	test_kernel_method_per_file();
	test_no_digest_and_off();
	test_tree_cache();
	test_lru_bound();
	test_store_trees();
	test_basedirs();
	test_threads();
	test_io_two_readers_one_thread();
}

int main(void)
{
	char *cmd;
	struct cfs_cas *probe = NULL;
	struct cfs_cas_options o = { .io = CFS_IO_URING };
	bool have_uring;

	CHECK(mkdtemp(tmpdir));
	/* every test with pread, then again with io_uring if it works here */
	io_mode = CFS_IO_PREAD;
	run_all();
	have_uring = cfs_cas_open(tmpdir, &o, &probe) == 0;
	if (have_uring) {
		CHECK(strcmp(cfs_cas_io_backend(probe), "io_uring") == 0);
		cfs_cas_unref(probe);
		cmd = pathf("rm -rf %s/*", tmpdir);
		CHECK(system(cmd) == 0);
		free(cmd);
		io_mode = CFS_IO_URING;
		run_all();
	} else {
		fprintf(stderr, "test-cas: io_uring unavailable here, pread only\n");
	}
	test_default_dir();
	cmd = pathf("rm -rf %s", tmpdir);
	CHECK(system(cmd) == 0);
	free(cmd);
	printf("test-cas: all tests passed (%s)\n", have_uring ? "pread and io_uring" : "pread");
	return 0;
}
