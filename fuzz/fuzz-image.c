/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * libFuzzer target for the image reader: open the input from memory and
 * exercise every accessor on the whole tree (inodes, directory iteration
 * and cookie resumption, lookups of each name, xattrs, backing metadata,
 * symlinks, reads), then load the tree (cfs_tree_from_image()), print it
 * as the upstream-compatible views do and write it again.  Rejecting an
 * input is fine; crashing, hanging, reading out of bounds or breaking one
 * of the consistency checks below (abort) is a bug.
 */
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "cfs-image.h"
#include "cfs-writer.h"
#include "erofs-disk.h"
#include "info-list.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define FUZZ_CHECK(cond)                                                              \
	do {                                                                          \
		if (!(cond)) {                                                        \
			fprintf(stderr, "fuzz-image: check failed at line %d: %s\n", \
				__LINE__, #cond);                                     \
			abort();                                                      \
		}                                                                     \
	} while (0)

static bool err_ok(long long r)
{
	return r >= 0 || r == -EFSCORRUPTED || r == -EOPNOTSUPP || r == -ENOENT || r == -ENOTDIR ||
	       r == -ENODATA || r == -ERANGE || r == -EINVAL || r == -EFBIG || r == -ENOMEM;
}

/* Read every byte of a borrowed buffer, so ASan sees an out-of-bounds one. */
static volatile uint8_t sink;
static void touch(const void *p, size_t len)
{
	uint8_t acc = 0;

	for (size_t i = 0; i < len; i++)
		acc ^= ((const uint8_t *)p)[i];
	sink = acc;
}

struct fuzz_ctx {
	const struct cfs_image *img;
	const struct cfs_inode *ino;
	bool xattr_filter; /* superblock has EROFS_FEATURE_COMPAT_XATTR_FILTER */
	unsigned budget; /* bounds the work per input */
};

static int xattr_cb(void *userdata, const char *name, const uint8_t *value, size_t len)
{
	struct fuzz_ctx *c = userdata;
	const uint8_t *v = NULL;
	size_t l = 0;
	int r;

	FUZZ_CHECK(name[0] != '\0');
	/* Every listed name can be read back, unless the inode's bloom filter
	 * (which lookups honour, as in the kernel) says it is absent. */
	r = cfs_img_get_xattr(c->img, c->ino, name, &v, &l);
	FUZZ_CHECK(r == 0 || (r == -ENODATA && c->xattr_filter));
	if (r == 0)
		touch(v, l);
	touch(value, len);
	return 0;
}

/* Directory cookies: resuming at an entry's next_cookie yields the entry
 * that followed it in a full listing. */
struct listing {
	uint64_t nids[64], cookies[64];
	size_t n;
};

static int list_cb(void *userdata, const char *name, size_t namelen, uint64_t nid, unsigned dtype,
		   uint64_t next_cookie)
{
	struct listing *l = userdata;

	FUZZ_CHECK(namelen > 0 && namelen <= 255 && next_cookie != 0);
	if (l->n == 64)
		return 1;
	l->nids[l->n] = nid;
	l->cookies[l->n] = next_cookie;
	l->n++;
	return 0;
}

static int first_cb(void *userdata, const char *name, size_t namelen, uint64_t nid, unsigned dtype,
		    uint64_t next_cookie)
{
	*(uint64_t *)userdata = nid;
	return 1;
}

static void check_dir(const struct cfs_image *img, const struct cfs_inode *dir)
{
	struct listing l = { .n = 0 };
	int r = cfs_img_iterate_dir(img, dir, 0, list_cb, &l);

	FUZZ_CHECK(err_ok(r));
	if (r < 0)
		return;
	for (size_t i = 0; i + 1 < l.n; i++) {
		uint64_t nid = UINT64_MAX;

		r = cfs_img_iterate_dir(img, dir, l.cookies[i], first_cb, &nid);
		FUZZ_CHECK(r == 1 && nid == l.nids[i + 1]);
	}
	/* Arbitrary cookies are safe. */
	FUZZ_CHECK(err_ok(cfs_img_iterate_dir(img, dir, 13, first_cb, &(uint64_t){ 0 })));
	FUZZ_CHECK(err_ok(cfs_img_iterate_dir(img, dir, UINT64_MAX, first_cb, &(uint64_t){ 0 })));
}

static int visit(void *userdata, const struct cfs_inode *dir, const char *path, size_t pathlen,
		 const char *name, size_t namelen, const struct cfs_inode *ino, bool first_visit)
{
	struct fuzz_ctx *c = userdata;
	const struct cfs_image *img = c->img;
	static uint8_t buf[65536];
	char target[PATH_MAX];
	struct cfs_backing b;
	uint64_t nid;
	unsigned dtype;
	ssize_t n;
	int r;

	if (c->budget-- == 0)
		return 1;
	FUZZ_CHECK(strlen(path) == pathlen && namelen > 0 && !memchr(name, '/', namelen));

	r = cfs_img_lookup(img, dir, name, namelen, &nid, &dtype);
	FUZZ_CHECK(err_ok(r));
	if (!first_visit)
		return 0;

	c->ino = ino;
	FUZZ_CHECK(err_ok(cfs_img_iterate_xattrs(img, ino, xattr_cb, c)));
	r = cfs_img_get_backing(img, ino, &b);
	FUZZ_CHECK(err_ok(r));
	if (r == 0 && b.redirect)
		touch(b.redirect, b.redirect_len);

	n = cfs_img_readlink(img, ino, target, sizeof(target));
	FUZZ_CHECK(err_ok(n));
	if (n >= 0)
		FUZZ_CHECK((size_t)n == strlen(target));

	n = cfs_img_read(img, ino, 0, buf, sizeof(buf));
	FUZZ_CHECK(err_ok(n) && n <= (ssize_t)sizeof(buf));
	if (n >= 0)
		FUZZ_CHECK((uint64_t)n == (ino->size < sizeof(buf) ? ino->size : sizeof(buf)));
	if (ino->size > 4096)
		FUZZ_CHECK(err_ok(cfs_img_read(img, ino, ino->size - 4097, buf, 8192)));
	FUZZ_CHECK(err_ok(cfs_img_read(img, ino, UINT64_MAX - 1, buf, 16)));

	if (S_ISDIR(ino->mode))
		check_dir(img, ino);
	return 0;
}

static int object_cb(void *userdata, const char *path)
{
	FUZZ_CHECK(path != NULL);
	return 0;
}

static int count_write(void *userdata, const void *buf, size_t len)
{
	*(size_t *)userdata += len;
	return 0;
}

/* The loaded tree: printed, listed, and written again (the writer refuses
 * what an image may say but a tree must not: hard links to directories,
 * names with '/', overlong payloads). */
static void check_tree(const struct cfs_image *img, FILE *null)
{
	_cleanup_(cfs_node_freep) struct cfs_node *root = NULL;
	struct cfs_img_diag diag;
	size_t written = 0;
	struct cfs_write_options wo = { .max_version = 1, .write = count_write, .userdata = &written };
	int r;

	r = cfs_tree_from_image(img, NULL, &root, &diag);
	FUZZ_CHECK(err_ok(r));
	if (r < 0)
		return;
	FUZZ_CHECK(cfs_dump_print(root, null) == 0);
	FUZZ_CHECK(cfs_info_print_ls(root, null) == 0);
	FUZZ_CHECK(cfs_info_list_objects(root, object_cb, NULL) == 0);
	r = cfs_write_image(root, &wo, NULL);
	FUZZ_CHECK(err_ok(r) || r == -ENAMETOOLONG);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	_cleanup_(cfs_img_unrefp) struct cfs_image *img = NULL;
	static FILE *null;
	struct fuzz_ctx c;
	struct cfs_inode root;
	uint64_t nid;

	if (size > (4U << 20))
		return 0;
	if (cfs_img_open_mem(data, size, 0, &img) < 0)
		return 0;

	FUZZ_CHECK(cfs_img_read_inode(img, cfs_img_root_nid(img), &root) == 0);
	FUZZ_CHECK(S_ISDIR(root.mode));
	FUZZ_CHECK(err_ok(cfs_img_lookup(img, &root, "..", 2, &nid, NULL)));
	check_dir(img, &root);
	c = (struct fuzz_ctx){ .img = img, .budget = 20000,
			       .xattr_filter = data[EROFS_SUPER_OFFSET + 8] & EROFS_FEATURE_COMPAT_XATTR_FILTER };
	FUZZ_CHECK(err_ok(cfs_img_walk(img, visit, &c)));

	if (!null)
		null = fopen("/dev/null", "w");
	if (null)
		check_tree(img, null);
	return 0;
}
