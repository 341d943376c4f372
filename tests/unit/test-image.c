/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Unit tests of the image reader (format/image.c) on the conformance images
 * and on systematically corrupted copies of them, and of loading an image
 * into the writer's tree (format/tree-image.c): written again, a tree gives
 * the image's bytes; a hostile one fails cleanly.
 *
 * Usage: test-image [CONFORMANCE_IMAGES_DIR]; without an argument the
 * directory is found from $CFS_SOURCE_DIR or relative to this source file.
 * Every check aborts with a message on failure (independent of NDEBUG).
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/sha.h>

#include "cfs-image.h"
#include "cfs-writer.h"
#include "erofs-disk.h"

#define CHECK(cond)                                                                          \
	do {                                                                                 \
		if (!(cond)) {                                                               \
			fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond); \
			abort();                                                             \
		}                                                                            \
	} while (0)

#define CHECK_ERR(expr, err)                                                                  \
	do {                                                                                  \
		long long _r = (long long)(expr);                                             \
		if (_r != (err)) {                                                            \
			fprintf(stderr, "%s:%d: %s returned %lld, expected %d\n", __FILE__, __LINE__, \
				#expr, _r, (int)(err));                                       \
			abort();                                                              \
		}                                                                             \
	} while (0)

static const char *images_dir;

/* ------------------------------------------------------------------ */

struct blob {
	uint8_t *data;
	size_t size;
};

static struct blob read_file(const char *path)
{
	struct blob b = { 0 };
	struct stat st;
	int fd = open(path, O_RDONLY | O_CLOEXEC);

	CHECK(fd >= 0);
	CHECK(fstat(fd, &st) == 0);
	b.size = (size_t)st.st_size;
	b.data = malloc(b.size ? b.size : 1);
	CHECK(b.data);
	CHECK(read(fd, b.data, b.size) == (ssize_t)b.size);
	close(fd);
	return b;
}

/* Conformance images by name; "../../reader/NAME" reaches tests/data/reader. */
static char *image_path(const char *name)
{
	char *p;

	CHECK(asprintf(&p, "%s/%s", images_dir, name) > 0);
	return p;
}

struct wbuf {
	uint8_t *data;
	size_t len, cap;
};

static int wbuf_write(void *userdata, const void *p, size_t len)
{
	struct wbuf *b = userdata;

	if (b->len + len > b->cap) {
		b->cap = (b->len + len) * 2;
		b->data = realloc(b->data, b->cap);
		CHECK(b->data);
	}
	memcpy(b->data + b->len, p, len);
	b->len += len;
	return 0;
}

/* Write @root with format version @version into @out; the writer's result. */
static int write_tree(struct cfs_node *root, uint32_t version, struct wbuf *out)
{
	struct cfs_write_options wo = { .min_version = version, .max_version = version,
					.write = wbuf_write, .userdata = out };

	return cfs_write_image(root, &wo, NULL);
}

/* ------------------------------------------------------------------ */
/* A full, checking walk of a good image                                */

struct good_walk {
	const struct cfs_image *img;
	size_t entries;      /* every entry met */
	size_t whiteouts;    /* 0:0 character devices */
	size_t dirs, regs, links, externals, with_digest;
};

static int check_xattr_cb(void *userdata, const char *name, const uint8_t *value, size_t len)
{
	const struct cfs_inode *ino = ((void **)userdata)[1];
	const struct cfs_image *img = ((void **)userdata)[0];
	const uint8_t *v2;
	size_t l2;

	CHECK(name[0] != '\0');
	/* Looking the name up gives the same value. */
	CHECK_ERR(cfs_img_get_xattr(img, ino, name, &v2, &l2), 0);
	CHECK(l2 == len && memcmp(v2, value, len) == 0);
	return 0;
}

static int good_walk_cb(void *userdata, const struct cfs_inode *dir, const char *path,
			size_t pathlen, const char *name, size_t namelen,
			const struct cfs_inode *ino, bool first_visit)
{
	struct good_walk *w = userdata;
	const struct cfs_image *img = w->img;
	uint64_t nid;
	unsigned dtype;
	void *ctx[2] = { (void *)img, (void *)ino };

	CHECK(strlen(path) == pathlen && path[0] == '/');
	CHECK(name + namelen == path + pathlen && name[-1] == '/');
	w->entries++;

	/* The name can be looked up in its directory. */
	CHECK_ERR(cfs_img_lookup(img, dir, name, namelen, &nid, &dtype), 0);
	CHECK(nid == ino->nid);
	CHECK(DTTOIF(dtype) == (ino->mode & S_IFMT));

	CHECK_ERR(cfs_img_iterate_xattrs(img, ino, check_xattr_cb, ctx), 0);

	switch (ino->mode & S_IFMT) {
	case S_IFDIR: {
		uint64_t dotnid;

		w->dirs++;
		CHECK_ERR(cfs_img_lookup(img, ino, ".", 1, &dotnid, NULL), 0);
		CHECK(dotnid == ino->nid);
		CHECK_ERR(cfs_img_lookup(img, ino, "..", 2, &dotnid, NULL), 0);
		CHECK(dotnid == dir->nid);
		CHECK_ERR(cfs_img_readlink(img, ino, (char[8]){ 0 }, 8), -EINVAL);
		break;
	}
	case S_IFLNK: {
		char buf[PATH_MAX];
		ssize_t n = cfs_img_readlink(img, ino, buf, sizeof(buf));

		w->links++;
		CHECK(n > 0 && (size_t)n == strlen(buf));
		CHECK((uint64_t)n == ino->size);
		CHECK_ERR(cfs_img_readlink(img, ino, buf, (size_t)n), -ERANGE);
		CHECK_ERR(cfs_img_lookup(img, ino, "x", 1, &nid, NULL), -ENOTDIR);
		break;
	}
	case S_IFREG: {
		struct cfs_backing b;
		size_t want = ino->size < (1U << 20) ? (size_t)ino->size : 1U << 20;
		uint8_t *buf = malloc(want + 1);
		ssize_t n;

		w->regs++;
		CHECK(buf);
		CHECK_ERR(cfs_img_get_backing(img, ino, &b), 0);
		n = cfs_img_read(img, ino, 0, buf, want + 1);
		if (b.is_external) {
			w->externals++;
			CHECK(ino->datalayout == EROFS_INODE_CHUNK_BASED);
			/* Holes in the image read as zeros.  (Upstream puts
			 * the chunk table of files over one chunk, 8 TiB, where
			 * readers do not look: those read whatever the kernel
			 * would, here past the end of the image.) */
			if (ino->size <= UINT64_C(1) << 43) {
				CHECK(n == (ssize_t)(want < ino->size ? want + 1 : ino->size));
				for (ssize_t i = 0; i < n; i++)
					CHECK(buf[i] == 0);
			} else {
				CHECK(n == -EFSCORRUPTED || n == (ssize_t)want + 1);
			}
			if (b.has_digest)
				w->with_digest++;
		} else if (ino->size > 0) {
			CHECK(n == (ssize_t)(want < ino->size ? want + 1 : ino->size));
			/* A read at an offset agrees with the whole read. */
			uint8_t part[100];
			uint64_t off = want / 3;
			ssize_t m = cfs_img_read(img, ino, off, part, sizeof(part));

			CHECK(m == (ssize_t)(ino->size - off < sizeof(part) ? ino->size - off : sizeof(part)));
			CHECK(off + (uint64_t)m > want || memcmp(part, buf + off, (size_t)m) == 0);
		}
		CHECK_ERR(cfs_img_read(img, ino, ino->size, buf, 1), 0);
		if (ino->size > 1 && ino->size <= UINT64_C(1) << 43)
			CHECK_ERR(cfs_img_read(img, ino, ino->size - 1, buf, 10), 1);
		free(buf);
		break;
	}
	case S_IFCHR:
		if (ino->rdev == 0)
			w->whiteouts++;
		/* fallthrough */
	default:
		CHECK_ERR(cfs_img_read(img, ino, 0, (char[4]){ 0 }, 4), -EINVAL);
		break;
	}
	(void)first_visit;
	return 0;
}

/* Resuming from each next_cookie gives exactly the rest of the listing. */
struct listing {
	char names[4096][256];
	uint64_t cookies[4096];
	size_t n;
};

static int listing_cb(void *userdata, const char *name, size_t namelen, uint64_t nid, unsigned dtype,
		      uint64_t next_cookie)
{
	struct listing *l = userdata;

	CHECK(l->n < 4096 && namelen < 256);
	memcpy(l->names[l->n], name, namelen);
	l->names[l->n][namelen] = '\0';
	l->cookies[l->n] = next_cookie;
	CHECK(next_cookie != 0);
	l->n++;
	return 0;
}

static void check_cookies(const struct cfs_image *img, const struct cfs_inode *dir)
{
	static struct listing all, rest;

	all.n = 0;
	CHECK_ERR(cfs_img_iterate_dir(img, dir, 0, listing_cb, &all), 0);
	CHECK(all.n >= 2);
	for (size_t i = 0; i < all.n; i++) {
		rest.n = 0;
		CHECK_ERR(cfs_img_iterate_dir(img, dir, all.cookies[i], listing_cb, &rest), 0);
		CHECK(rest.n == all.n - i - 1);
		for (size_t k = 0; k < rest.n; k++)
			CHECK(strcmp(rest.names[k], all.names[i + 1 + k]) == 0);
		/* Names are sorted (the kernel's binary search relies on it). */
		if (i > 0)
			CHECK(strcmp(all.names[i - 1], all.names[i]) < 0);
	}
	/* Probes just beside every name (a byte appended, the last byte
	 * dropped or bumped) are found exactly when they are listed: the
	 * binary search has no off-by-one at block or entry edges. */
	for (size_t i = 0; i < all.n; i++) {
		char probe[258];
		size_t len = strlen(all.names[i]);

		for (int kind = 0; kind < 3; kind++) {
			size_t plen = len;
			bool listed = false;
			uint64_t nid;
			int r;

			memcpy(probe, all.names[i], len);
			if (kind == 0)
				probe[plen++] = '!';
			else if (kind == 1)
				plen--;
			else
				probe[plen - 1]++;
			probe[plen] = '\0';
			for (size_t k = 0; k < all.n && !listed; k++)
				listed = strcmp(all.names[k], probe) == 0;
			r = cfs_img_lookup(img, dir, probe, plen, &nid, NULL);
			CHECK(r == (listed ? 0 : -ENOENT));
		}
	}
}

static int count_lines(const char *path)
{
	FILE *f = fopen(path, "r");
	int n = 0, c;

	CHECK(f);
	while ((c = fgetc(f)) != EOF)
		n += c == '\n';
	fclose(f);
	return n;
}

static void test_good_image(const char *name)
{
	_cleanup_(cfs_img_unrefp) struct cfs_image *img = NULL;
	_cleanup_free_ char *path = image_path(name), *dump_path = NULL;
	struct good_walk w = { 0 };
	struct cfs_img_info info;
	struct cfs_inode root;
	uint64_t nid;
	int fd, dump_lines;

	fd = open(path, O_RDONLY | O_CLOEXEC);
	CHECK(fd >= 0);
	CHECK_ERR(cfs_img_open_fd(fd, 0, &img), 0);
	close(fd); /* the image owns its copy */

	cfs_img_get_info(img, &info);
	CHECK(info.blksz == 4096 && info.header_version == 1);
	CHECK(info.composefs_version <= 1);
	CHECK_ERR(cfs_img_read_inode(img, cfs_img_root_nid(img), &root), 0);
	CHECK(S_ISDIR(root.mode));
	CHECK_ERR(cfs_img_lookup(img, &root, "..", 2, &nid, NULL), 0);
	CHECK(nid == root.nid);
	CHECK_ERR(cfs_img_lookup(img, &root, "no such name", 12, &nid, NULL), -ENOENT);
	CHECK_ERR(cfs_img_lookup(img, &root, "", 0, &nid, NULL), -ENOENT);
	CHECK_ERR(cfs_img_get_xattr(img, &root, "user.nonexistent", &(const uint8_t *){ 0 },
				    &(size_t){ 0 }),
		  -ENODATA);
	/* Every image written by mkcomposefs has the 00..ff whiteouts and an
	 * opaque root. */
	CHECK_ERR(cfs_img_lookup(img, &root, "7f", 2, &nid, NULL), 0);
	CHECK_ERR(cfs_img_get_xattr(img, &root, "trusted.overlay.opaque", &(const uint8_t *){ 0 },
				    &(size_t){ 0 }),
		  0);
	CHECK_ERR(cfs_img_read_inode(img, UINT64_MAX, &root), -EFSCORRUPTED);
	CHECK_ERR(cfs_img_read_inode(img, info.image_size / 32, &root), -EFSCORRUPTED);

	CHECK_ERR(cfs_img_read_inode(img, cfs_img_root_nid(img), &root), 0);
	check_cookies(img, &root);

	w.img = img;
	CHECK_ERR(cfs_img_walk(img, good_walk_cb, &w), 0);
	/* 256 minus the names in 00..ff the image already had. */
	CHECK(w.whiteouts >= 250);

	/* The dump has one line per entry that is not a whiteout, plus the
	 * root. */
	CHECK(asprintf(&dump_path, "%s.info-dump", path) > 0);
	dump_lines = count_lines(dump_path);
	CHECK((size_t)dump_lines == w.entries - w.whiteouts + 1);

	/* The dump printer reproduces the expected text. */
	{
		char *buf = NULL;
		size_t len = 0;
		FILE *mem = open_memstream(&buf, &len);
		struct stat st;
		int dfd;
		char *expect;

		CHECK(mem);
		CHECK_ERR(cfs_img_print_dump(img, mem), 0);
		CHECK(fclose(mem) == 0);
		dfd = open(dump_path, O_RDONLY | O_CLOEXEC);
		CHECK(dfd >= 0 && fstat(dfd, &st) == 0);
		expect = malloc((size_t)st.st_size + 1);
		CHECK(expect && read(dfd, expect, (size_t)st.st_size) == st.st_size);
		close(dfd);
		CHECK(len == (size_t)st.st_size && memcmp(buf, expect, len) == 0);
		free(buf);
		free(expect);
	}
	/* Image -> tree -> writer gives what the text round trip (dump,
	 * parse, write) gives, and for an upstream image its bytes again. */
	{
		struct cfs_node *tree = NULL, *parsed = NULL;
		struct wbuf direct = { 0 }, text = { 0 };
		struct blob b = read_file(path);
		char *dump = NULL, *err = NULL;
		size_t dump_len = 0;
		FILE *mem = open_memstream(&dump, &dump_len);

		CHECK(mem);
		CHECK_ERR(cfs_tree_from_image(img, NULL, &tree, NULL), 0);
		CHECK_ERR(cfs_dump_print(tree, mem), 0);
		CHECK(fclose(mem) == 0);
		CHECK_ERR(cfs_dump_parse_mem(dump, dump_len, 0, &parsed, &err), 0);
		CHECK_ERR(write_tree(tree, info.composefs_version, &direct), 0);
		CHECK_ERR(write_tree(parsed, info.composefs_version, &text), 0);
		CHECK(direct.len == text.len && memcmp(direct.data, text.data, text.len) == 0);
		if (!strstr(name, "../"))
			CHECK(direct.len == b.size && memcmp(direct.data, b.data, b.size) == 0);
		cfs_node_free(tree);
		cfs_node_free(parsed);
		free(direct.data);
		free(text.data);
		free(dump);
		free(b.data);
	}
	if (strstr(name, "rich-v")) {
		/* tests/data/reader/gen-rich-dump.py: every kind of entry. */
		CHECK(w.dirs >= 33 && w.externals >= 100 && w.with_digest >= 100 && w.links >= 100);
		CHECK_ERR(cfs_img_lookup(img, &root, "big", 3, &nid, NULL), 0);
		CHECK_ERR(cfs_img_read_inode(img, nid, &root), 0);
		CHECK(root.size > 2 * 4096); /* several directory blocks */
		check_cookies(img, &root);
	}
	printf("ok %s: %zu entries, %zu dirs, %zu files (%zu external, %zu with digest), %zu symlinks\n",
	       name, w.entries, w.dirs, w.regs, w.externals, w.with_digest, w.links);
}

/* ------------------------------------------------------------------ */
/* Corrupt images: never crash, only allowed errors                     */

static bool allowed(long long r)
{
	return r >= 0 || r == -EFSCORRUPTED || r == -EOPNOTSUPP || r == -ENOENT || r == -ENOTDIR ||
	       r == -ENODATA || r == -ERANGE || r == -EINVAL;
}

static int any_xattr_cb(void *userdata, const char *name, const uint8_t *value, size_t len)
{
	(void)userdata;
	CHECK(strlen(name) > 0);
	if (len)
		CHECK(value != NULL);
	return 0;
}

static int corrupt_walk_cb(void *userdata, const struct cfs_inode *dir, const char *path,
			   size_t pathlen, const char *name, size_t namelen,
			   const struct cfs_inode *ino, bool first_visit)
{
	const struct cfs_image *img = userdata;
	static uint8_t buf[8192];
	struct cfs_backing b;
	uint64_t nid;
	long long r;

	r = cfs_img_lookup(img, dir, name, namelen, &nid, NULL);
	CHECK(allowed(r));
	CHECK(allowed(cfs_img_iterate_xattrs(img, ino, any_xattr_cb, NULL)));
	CHECK(allowed(cfs_img_get_backing(img, ino, &b)));
	CHECK(allowed(cfs_img_readlink(img, ino, (char *)buf, sizeof(buf))));
	r = cfs_img_read(img, ino, 0, buf, sizeof(buf));
	CHECK(allowed(r) && r <= (long long)sizeof(buf));
	if (ino->size > 5000)
		CHECK(allowed(cfs_img_read(img, ino, ino->size - 5000, buf, sizeof(buf))));
	return 0;
}

static int count_cb(void *userdata, const char *name, size_t namelen, uint64_t nid, unsigned dtype,
		    uint64_t next_cookie)
{
	(*(size_t *)userdata)++;
	return 0;
}

/* A possibly hostile image's tree: it loads or fails cleanly, prints, and
 * the writer writes it or refuses it cleanly. */
static void check_loaded_tree(const struct cfs_image *img, FILE *null)
{
	struct cfs_node *root = NULL;
	struct cfs_img_diag diag;
	struct wbuf out = { 0 };
	int r;

	r = cfs_tree_from_image(img, NULL, &root, &diag);
	CHECK(allowed(r) || r == -EFBIG);
	if (r < 0) {
		CHECK(root == NULL);
		return;
	}
	CHECK_ERR(cfs_dump_print(root, null), 0);
	r = write_tree(root, 1, &out);
	CHECK(allowed(r) || r == -EFBIG || r == -ENAMETOOLONG);
	cfs_node_free(root);
	free(out.data);
}

/* Open a possibly corrupt image from memory and exercise everything. */
static int exercise(const uint8_t *data, size_t size)
{
	_cleanup_(cfs_img_unrefp) struct cfs_image *img = NULL;
	struct cfs_img_diag diag;
	struct cfs_inode root;
	FILE *null;
	size_t n = 0;
	int r;

	r = cfs_img_open_mem_ex(data, size, 0, &diag, &img);
	CHECK(allowed(r));
	if (r < 0) {
		CHECK(diag.reason[0] != '\0');
		return r;
	}
	CHECK_ERR(cfs_img_read_inode(img, cfs_img_root_nid(img), &root), 0);
	CHECK(allowed(cfs_img_iterate_dir(img, &root, 0, count_cb, &n)));
	CHECK(allowed(cfs_img_iterate_dir(img, &root, 4096 + 24, count_cb, &n)));
	CHECK(allowed(cfs_img_iterate_dir(img, &root, 13, count_cb, &n)));
	CHECK(allowed(cfs_img_walk(img, corrupt_walk_cb, img)));
	null = fopen("/dev/null", "w");
	CHECK(null);
	check_loaded_tree(img, null);
	fclose(null);
	return 0;
}

static void test_corruptions(const char *name, size_t meta_limit)
{
	_cleanup_free_ char *path = image_path(name);
	struct blob b = read_file(path);
	uint8_t *copy = malloc(b.size);
	size_t opened = 0, meta_end = b.size < meta_limit ? b.size : meta_limit;
	static const uint8_t patterns[] = { 0xff, 0x01 };

	CHECK(copy);
	CHECK_ERR(exercise(b.data, b.size), 0);

	/* Every byte of the metadata, flipped three ways. */
	for (size_t i = 0; i < meta_end; i++) {
		if (i == sizeof(struct cfs_disk_header))
			i = EROFS_SUPER_OFFSET; /* unused padding between header and superblock */
		for (size_t p = 0; p < ARRAY_SIZE(patterns); p++) {
			memcpy(copy, b.data, b.size);
			copy[i] ^= patterns[p];
			opened += exercise(copy, b.size) == 0;
		}
	}
	/* Truncated at every 64 bytes. */
	for (size_t len = 0; len < b.size; len += 64) {
		uint8_t *t = malloc(len ? len : 1);

		CHECK(t);
		memcpy(t, b.data, len);
		exercise(t, len);
		free(t);
	}
	printf("ok corruptions of %s: %zu bytes x %zu patterns, %zu opened\n", name,
	       meta_end - (EROFS_SUPER_OFFSET - sizeof(struct cfs_disk_header)),
	       ARRAY_SIZE(patterns), opened);
	free(copy);
	free(b.data);
}

/* A larger image: random single-byte changes (deterministic), since
 * flipping every byte would take too long. */
static void test_random_corruptions(const char *name, size_t meta_limit, unsigned count)
{
	_cleanup_free_ char *path = image_path(name);
	struct blob b = read_file(path);
	uint8_t *copy = malloc(b.size);
	uint64_t x = 0x9E3779B97F4A7C15ULL;
	size_t opened = 0, meta_end = b.size < meta_limit ? b.size : meta_limit;

	CHECK(copy);
	for (unsigned k = 0; k < count; k++) {
		size_t pos;

		/* xorshift64 */
		x ^= x << 13;
		x ^= x >> 7;
		x ^= x << 17;
		pos = EROFS_SUPER_OFFSET + (size_t)(x % (meta_end - EROFS_SUPER_OFFSET));
		memcpy(copy, b.data, b.size);
		copy[pos] ^= (uint8_t)(x >> 32) | 1;
		if (k % 4 == 0) /* and sometimes a second byte nearby */
			copy[EROFS_SUPER_OFFSET + (pos + 7) % (meta_end - EROFS_SUPER_OFFSET)] ^= 0x80;
		opened += exercise(copy, b.size) == 0;
	}
	printf("ok %u random corruptions of %s, %zu opened\n", count, name, opened);
	free(copy);
	free(b.data);
}

/* ------------------------------------------------------------------ */
/* Superblock checks                                                    */

static void put_le32(uint8_t *p, uint32_t v)
{
	p[0] = v;
	p[1] = v >> 8;
	p[2] = v >> 16;
	p[3] = v >> 24;
}

static int open_diag(uint8_t *data, size_t size, struct cfs_img_diag *diag)
{
	_cleanup_(cfs_img_unrefp) struct cfs_image *img = NULL;

	return cfs_img_open_mem_ex(data, size, 0, diag, &img);
}

static void test_superblock(void)
{
	_cleanup_free_ char *path = image_path("special.cfs");
	struct blob b = read_file(path);
	uint8_t *sb = b.data + EROFS_SUPER_OFFSET;
	struct cfs_img_diag diag;
	uint8_t save[128];

	memcpy(save, sb, sizeof(save));
	CHECK_ERR(open_diag(b.data, b.size, &diag), 0);

	/* Unknown incompatible features are refused and named. */
	put_le32(sb + offsetof(struct erofs_disk_super, feature_incompat),
		 EROFS_FEATURE_INCOMPAT_DEVICE_TABLE | 0x40000000);
	CHECK_ERR(open_diag(b.data, b.size, &diag), -EOPNOTSUPP);
	CHECK(diag.unsupported_incompat == (EROFS_FEATURE_INCOMPAT_DEVICE_TABLE | 0x40000000));
	CHECK(strstr(diag.reason, "device_table") && strstr(diag.reason, "unknown"));
	CHECK(strcmp(cfs_img_incompat_name(EROFS_FEATURE_INCOMPAT_DEVICE_TABLE), "device_table") == 0);
	/* Chunked files are known (composefs uses them). */
	put_le32(sb + offsetof(struct erofs_disk_super, feature_incompat),
		 EROFS_FEATURE_INCOMPAT_CHUNKED_FILE);
	CHECK_ERR(open_diag(b.data, b.size, &diag), 0);
	memcpy(sb, save, sizeof(save));

	/* Block size other than 4096. */
	sb[offsetof(struct erofs_disk_super, blkszbits)] = 9;
	CHECK_ERR(open_diag(b.data, b.size, &diag), -EOPNOTSUPP);
	memcpy(sb, save, sizeof(save));

	/* A checksum is verified when the superblock says it has one. */
	sb[offsetof(struct erofs_disk_super, feature_compat)] |= EROFS_FEATURE_COMPAT_SB_CHKSUM;
	CHECK_ERR(open_diag(b.data, b.size, &diag), -EFSCORRUPTED);
	CHECK(strstr(diag.reason, "checksum"));
	memcpy(sb, save, sizeof(save));

	/* Magic numbers. */
	b.data[0] ^= 1;
	CHECK_ERR(open_diag(b.data, b.size, &diag), -EFSCORRUPTED);
	CHECK(strstr(diag.reason, "composefs"));
	b.data[0] ^= 1;
	sb[0] ^= 1;
	CHECK_ERR(open_diag(b.data, b.size, &diag), -EFSCORRUPTED);
	CHECK(strstr(diag.reason, "magic"));
	sb[0] ^= 1;

	/* Root nid pointing at a non-directory or beyond the image. */
	put_le32(sb + offsetof(struct erofs_disk_super, meta_blkaddr), 0x100000);
	CHECK_ERR(open_diag(b.data, b.size, &diag), -EFSCORRUPTED);
	memcpy(sb, save, sizeof(save));
	sb[offsetof(struct erofs_disk_super, root_nid)] += 2; /* inside the root inode */
	CHECK(open_diag(b.data, b.size, &diag) < 0);
	memcpy(sb, save, sizeof(save));

	/* Truncated image: the superblock's block count is checked. */
	CHECK_ERR(open_diag(b.data, b.size - 4096, &diag), -EFSCORRUPTED);
	CHECK(strstr(diag.reason, "truncated"));

	/* Flags are reserved. */
	{
		struct cfs_image *img = NULL;

		CHECK_ERR(cfs_img_open_mem(b.data, b.size, 1, &img), -EINVAL);
	}
	free(b.data);
	printf("ok superblock checks\n");
}

/* The xattr name bloom filter is honoured as the kernel does: a set bit
 * hides a name from lookups (not from listing), and only when the
 * superblock announces the feature. */
static void test_xattr_filter(void)
{
	_cleanup_free_ char *path = image_path("../../reader/rich-v1.cfs");
	struct blob b = read_file(path);
	const uint8_t *v;
	size_t len;

	for (int pass = 0; pass < 3; pass++) {
		_cleanup_(cfs_img_unrefp) struct cfs_image *img = NULL;
		struct cfs_inode root, ino;
		uint64_t nid;
		int expect = 0;

		CHECK_ERR(cfs_img_open_mem(b.data, b.size, 0, &img), 0);
		CHECK_ERR(cfs_img_read_inode(img, cfs_img_root_nid(img), &root), 0);
		CHECK_ERR(cfs_img_lookup(img, &root, "xattrs", 6, &nid, NULL), 0);
		CHECK_ERR(cfs_img_read_inode(img, nid, &ino), 0);
		if (pass == 1)
			expect = -ENODATA; /* filter set to "nothing here" */
		CHECK_ERR(cfs_img_get_xattr(img, &ino, "user.v01", &v, &len), expect);
		CHECK_ERR(cfs_img_get_xattr(img, &ino, "user.absent", &v, &len), -ENODATA);
		if (pass == 0) {
			uint8_t *f = b.data + ino.inode_off + ino.inode_isize;

			CHECK(len == 8);
			f[0] = f[1] = f[2] = f[3] = 0xff;
		} else if (pass == 1) {
			b.data[EROFS_SUPER_OFFSET + offsetof(struct erofs_disk_super, feature_compat)] &=
				~EROFS_FEATURE_COMPAT_XATTR_FILTER;
		}
	}
	free(b.data);
	printf("ok xattr filter\n");
}

/* The image is read into memory: changing the file afterwards changes
 * nothing. */
static void test_owned_copy(void)
{
	_cleanup_free_ char *path = image_path("special.cfs");
	struct blob b = read_file(path);
	char tmp[] = "/tmp/test-image-XXXXXX";
	_cleanup_(cfs_img_unrefp) struct cfs_image *img = NULL;
	const uint8_t *bytes;
	size_t size;
	int fd = mkstemp(tmp);

	CHECK(fd >= 0);
	CHECK(write(fd, b.data, b.size) == (ssize_t)b.size);
	CHECK_ERR(cfs_img_open_fd(fd, 0, &img), 0);
	CHECK(pwrite(fd, "garbage!", 8, 1024) == 8);
	close(fd);
	unlink(tmp);
	bytes = cfs_img_bytes(img, &size);
	CHECK(size == b.size && memcmp(bytes, b.data, size) == 0);
	CHECK(cfs_img_ref(img) == img);
	CHECK(cfs_img_unref(img) == NULL);
	CHECK(cfs_img_unref(NULL) == NULL);
	free(b.data);
	printf("ok owned copy\n");
}

/* Lock-free: many threads walking one image. */
static void *thread_walk(void *arg)
{
	struct good_walk w = { .img = arg };

	for (int i = 0; i < 20; i++)
		CHECK_ERR(cfs_img_walk(arg, good_walk_cb, &w), 0);
	return NULL;
}

static void test_threads(void)
{
	_cleanup_free_ char *path = image_path("special_v1.cfs");
	_cleanup_(cfs_img_unrefp) struct cfs_image *img = NULL;
	pthread_t t[4];
	int fd = open(path, O_RDONLY | O_CLOEXEC);

	CHECK(fd >= 0);
	CHECK_ERR(cfs_img_open_fd(fd, 0, &img), 0);
	close(fd);
	for (size_t i = 0; i < ARRAY_SIZE(t); i++)
		CHECK(pthread_create(&t[i], NULL, thread_walk, img) == 0);
	for (size_t i = 0; i < ARRAY_SIZE(t); i++)
		CHECK(pthread_join(t[i], NULL) == 0);
	printf("ok threads\n");
}

/* ------------------------------------------------------------------ */
/* --list IMAGE: the raw EROFS view, for comparison with a kernel mount  */

static void print_hex(const uint8_t *p, size_t n)
{
	for (size_t i = 0; i < n; i++)
		printf("%02x", p[i]);
}

struct xlist {
	char *items[512];
	size_t n;
};

static int xlist_cb(void *userdata, const char *name, const uint8_t *value, size_t len)
{
	struct xlist *x = userdata;
	char *item = malloc(strlen(name) + 2 * len + 2), *q;

	CHECK(item && x->n < ARRAY_SIZE(x->items));
	q = item + sprintf(item, "%s=", name);
	for (size_t i = 0; i < len; i++)
		q += sprintf(q, "%02x", value[i]);
	x->items[x->n++] = item;
	return 0;
}

static int cmp_strp(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

/* One line per entry: path (hex), nid, mode, nlink, uid, gid, rdev, size,
 * mtime, symlink target (hex), sha256 of the first MiB and of the last
 * block of a regular file, sorted xattrs (name=hexvalue). */
static void list_entry(const struct cfs_image *img, const char *path, const struct cfs_inode *ino)
{
	struct xlist x = { .n = 0 };

	print_hex((const uint8_t *)path, strlen(path));
	printf("\t%llu\t%o\t%u\t%u\t%u\t%llu\t%llu\t%lld.%u\t", (unsigned long long)ino->nid,
	       ino->mode, ino->nlink, ino->uid, ino->gid, (unsigned long long)ino->rdev,
	       (unsigned long long)ino->size, (long long)ino->mtime, ino->mtime_nsec);
	if (S_ISLNK(ino->mode)) {
		char buf[PATH_MAX];
		ssize_t n = cfs_img_readlink(img, ino, buf, sizeof(buf));

		CHECK(n >= 0);
		print_hex((const uint8_t *)buf, (size_t)n);
	} else {
		printf("-");
	}
	printf("\t");
	if (S_ISREG(ino->mode) && ino->size <= UINT64_C(1) << 43) {
		size_t head = ino->size < (1U << 20) ? (size_t)ino->size : 1U << 20;
		uint64_t tail_off = ino->size > 4096 ? ino->size - 4096 : 0;
		uint8_t *buf = malloc(head + 1), md[SHA256_DIGEST_LENGTH];
		uint8_t tail[4096];
		ssize_t n;

		CHECK(buf);
		n = cfs_img_read(img, ino, 0, buf, head);
		CHECK(n == (ssize_t)head);
		SHA256(buf, head, md);
		print_hex(md, 8);
		n = cfs_img_read(img, ino, tail_off, tail, sizeof(tail));
		CHECK(n == (ssize_t)(ino->size - tail_off));
		SHA256(tail, (size_t)n, md);
		printf("/");
		print_hex(md, 8);
		free(buf);
	} else {
		printf("-");
	}
	printf("\t");
	CHECK_ERR(cfs_img_iterate_xattrs(img, ino, xlist_cb, &x), 0);
	qsort(x.items, x.n, sizeof(x.items[0]), cmp_strp);
	for (size_t i = 0; i < x.n; i++) {
		printf("%s%s", i ? "," : "", x.items[i]);
		free(x.items[i]);
	}
	printf("\n");
}

static int list_cb(void *userdata, const struct cfs_inode *dir, const char *path, size_t pathlen,
		   const char *name, size_t namelen, const struct cfs_inode *ino, bool first_visit)
{
	list_entry(userdata, path, ino);
	return 0;
}

static int list_image(const char *path)
{
	_cleanup_(cfs_img_unrefp) struct cfs_image *img = NULL;
	struct cfs_inode root;
	int fd = open(path, O_RDONLY | O_CLOEXEC);

	CHECK(fd >= 0);
	CHECK_ERR(cfs_img_open_fd(fd, 0, &img), 0);
	close(fd);
	CHECK_ERR(cfs_img_read_inode(img, cfs_img_root_nid(img), &root), 0);
	list_entry(img, "/", &root);
	CHECK_ERR(cfs_img_walk(img, list_cb, img), 0);
	return 0;
}

/* ------------------------------------------------------------------ */
/* Hostile trees through the loader and the writer                      */

static struct cfs_node *mknode(uint32_t mode)
{
	struct cfs_node *n = cfs_node_new();

	CHECK(n);
	n->mode = mode;
	return n;
}

/* Write @root (version 1), load the image back, write that again: the same
 * bytes.  Returns the image (malloc'ed, *ret_len bytes). */
static uint8_t *roundtrip(struct cfs_node *root, size_t *ret_len)
{
	_cleanup_(cfs_img_unrefp) struct cfs_image *img = NULL;
	struct wbuf a = { 0 }, b = { 0 };
	struct cfs_node *tree = NULL;

	CHECK_ERR(write_tree(root, 1, &a), 0);
	CHECK_ERR(cfs_img_open_mem(a.data, a.len, 0, &img), 0);
	CHECK_ERR(cfs_tree_from_image(img, NULL, &tree, NULL), 0);
	CHECK_ERR(write_tree(tree, 1, &b), 0);
	CHECK(a.len == b.len && memcmp(a.data, b.data, a.len) == 0);
	cfs_node_free(tree);
	free(b.data);
	*ret_len = a.len;
	return a.data;
}

/* A chain of directories deeper than any C stack would hold recursion
 * over it (the writer's passes over the tree recursed). */
static void test_deep_tree(void)
{
	enum { DEPTH = 200000 };
	struct cfs_node *root = mknode(S_IFDIR | 0755), *n = root;
	size_t len;

	for (unsigned i = 0; i < DEPTH; i++) {
		struct cfs_node *c = mknode(S_IFDIR | 0755);

		CHECK_ERR(cfs_node_add_child(n, c, "d"), 0);
		n = c;
	}
	free(roundtrip(root, &len));
	cfs_node_free(root);
}

/* A huge nlink and a large binary xattr survive image -> tree -> image; the
 * xattr's dump line is longer than the dump parser takes (the text round
 * trip composefs-dump used to make could not rebuild such an image). */
static void test_loader_limits(void)
{
	struct cfs_node *root = mknode(S_IFDIR | 0755), *f = mknode(S_IFREG | 0644), *tree = NULL;
	_cleanup_(cfs_img_unrefp) struct cfs_image *img = NULL;
	static uint8_t big[20000];
	char *text = NULL, *err = NULL;
	size_t len, text_len = 0;
	uint8_t *data;
	FILE *mem;

	memset(big, 0xff, sizeof(big));
	f->nlink = UINT32_MAX;
	CHECK_ERR(cfs_node_set_xattr(f, "user.big", big, sizeof(big)), 0);
	CHECK_ERR(cfs_node_add_child(root, f, "f"), 0);
	data = roundtrip(root, &len);
	CHECK_ERR(cfs_img_open_mem(data, len, 0, &img), 0);
	CHECK_ERR(cfs_tree_from_image(img, NULL, &tree, NULL), 0);
	f = cfs_node_lookup_child(tree, "f");
	CHECK(f && f->nlink == UINT32_MAX && cfs_node_get_xattr(f, "user.big")->value_len == 20000);
	mem = open_memstream(&text, &text_len);
	CHECK(mem);
	CHECK_ERR(cfs_dump_print(tree, mem), 0);
	CHECK(fclose(mem) == 0);
	cfs_node_free(tree);
	tree = NULL;
	CHECK(cfs_dump_parse_mem(text, text_len, 0, &tree, &err) < 0 && strstr(err, "too many xattrs"));
	free(err);
	free(text);
	free(data);
	cfs_node_free(root);
}

/* /a/b's directory entry patched to name the root: a loop.  It loads as a
 * hard link to the root (printed as upstream does); the writer refuses it. */
static void test_directory_loop(void)
{
	struct cfs_node *root = mknode(S_IFDIR | 0755), *a = mknode(S_IFDIR | 0755), *tree = NULL;
	_cleanup_(cfs_img_unrefp) struct cfs_image *img = NULL;
	struct cfs_inode ri, ai;
	struct wbuf out = { 0 }, again = { 0 };
	struct cfs_write_options wo = { .max_version = 1, .write = wbuf_write, .userdata = &again };
	char *text = NULL, *bad = NULL;
	size_t text_len = 0, tail, count;
	uint64_t nid;
	FILE *mem;

	CHECK_ERR(cfs_node_add_child(root, a, "a"), 0);
	CHECK_ERR(cfs_node_add_child(a, mknode(S_IFDIR | 0755), "b"), 0);
	CHECK_ERR(write_tree(root, 1, &out), 0);
	cfs_node_free(root);
	CHECK_ERR(cfs_img_open_mem(out.data, out.len, 0, &img), 0);
	CHECK_ERR(cfs_img_read_inode(img, cfs_img_root_nid(img), &ri), 0);
	CHECK_ERR(cfs_img_lookup(img, &ri, "a", 1, &nid, NULL), 0);
	CHECK_ERR(cfs_img_read_inode(img, nid, &ai), 0);
	CHECK(ai.datalayout == EROFS_INODE_FLAT_INLINE);
	tail = ai.inode_off + ai.inode_isize + (ai.xattr_icount ? 12 + 4 * (ai.xattr_icount - 1) : 0);
	count = (out.data[tail + 8] | out.data[tail + 9] << 8) / 12;
	for (size_t i = 0; i < count; i++) {
		uint8_t *de = out.data + tail + 12 * i;
		size_t off = de[8] | de[9] << 8;

		if (out.data[tail + off] == 'b' && (i + 1 == count || de[12 + 8] != off + 1)) {
			for (int k = 0; k < 8; k++)
				de[k] = (uint8_t)(ri.nid >> (8 * k));
		}
	}
	img = cfs_img_unref(img);
	CHECK_ERR(cfs_img_open_mem(out.data, out.len, 0, &img), 0);
	CHECK_ERR(cfs_tree_from_image(img, NULL, &tree, NULL), 0);
	a = cfs_node_lookup_child(tree, "a");
	CHECK(a && cfs_node_lookup_child(a, "b")->link_to == tree);
	mem = open_memstream(&text, &text_len);
	CHECK(mem);
	CHECK_ERR(cfs_dump_print(tree, mem), 0);
	CHECK(fclose(mem) == 0);
	CHECK(strstr(text, "\n/a/b ") && strstr(strstr(text, "\n/a/b "), " @40755 "));
	wo.ret_error_path = &bad;
	CHECK_ERR(cfs_write_image(tree, &wo, NULL), -EINVAL);
	CHECK(bad && strcmp(bad, "/a/b") == 0);
	free(bad);
	free(text);
	free(again.data);
	cfs_node_free(tree);
	free(out.data);
}

static bool is_dir(const char *p)
{
	struct stat st;

	return stat(p, &st) == 0 && S_ISDIR(st.st_mode);
}

static const char *find_images_dir(int argc, char **argv)
{
	static char buf[PATH_MAX];
	const char *src = getenv("CFS_SOURCE_DIR");
	char *slash;

	if (argc > 1)
		return argv[1];
	if (src) {
		snprintf(buf, sizeof(buf), "%s/tests/data/conformance/images", src);
		if (is_dir(buf))
			return buf;
	}
	if (is_dir("tests/data/conformance/images"))
		return "tests/data/conformance/images"; /* run from the source tree */
	/* __FILE__ is tests/unit/test-image.c, relative to the build dir or
	 * absolute. */
	snprintf(buf, sizeof(buf), "%s", __FILE__);
	slash = strrchr(buf, '/');
	if (slash) {
		snprintf(slash, sizeof(buf) - (size_t)(slash - buf), "/../data/conformance/images");
		if (is_dir(buf))
			return buf;
	}
	return NULL;
}

int main(int argc, char **argv)
{
	static const char *const good[] = {
		"bigfile-xattr.cfs", "bigfile.cfs", "honggfuzz-bigfile-with-acl.cfs",
		"honggfuzz-chardev-nonzero-size.cfs", "honggfuzz-long-symlink.cfs",
		"honggfuzz-longlink-unterminated.cfs", "longlink.cfs", "no-newline.cfs",
		"special.cfs", "special_v1.cfs", "../../reader/rich-v0.cfs", "../../reader/rich-v1.cfs",
	};

	if (argc == 3 && strcmp(argv[1], "--list") == 0)
		return list_image(argv[2]);
	images_dir = find_images_dir(argc, argv);
	if (!images_dir) {
		fprintf(stderr, "test-image: conformance images not found; pass their directory\n");
		return 1;
	}
	for (size_t i = 0; i < ARRAY_SIZE(good); i++)
		test_good_image(good[i]);
	test_superblock();
	test_xattr_filter();
	test_owned_copy();
	test_threads();
	test_deep_tree();
	test_loader_limits();
	test_directory_loop();
	/* Small images: flip every metadata byte (header, superblock, inodes,
	 * xattrs, inline directories; the data blocks follow). */
	test_corruptions("no-newline.cfs", 12288);
	test_corruptions("special_v1.cfs", 8192);
	test_random_corruptions("../../reader/rich-v1.cfs", 64 * 1024, 1500);
	printf("all image tests passed\n");
	return 0;
}
