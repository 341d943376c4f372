/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Unit tests of the tree API, the dump parser and the image writer:
 * a tree built through the API equals the one parsed from the equivalent
 * dump, the writer's error paths, and what the reader sees in the result.
 */
#undef NDEBUG
#include <assert.h>
#include <dirent.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cas.h"
#include "cfs-image.h"
#include "cfs-writer.h"
#include "writer-internal.h" /* cfs_node_unset_xattr() */

struct buf {
	uint8_t *data;
	size_t len;
	int fail_after; /* make the n-th write fail (0: never) */
	int calls;
};

static int buf_write(void *userdata, const void *p, size_t len)
{
	struct buf *b = userdata;

	if (b->fail_after && ++b->calls >= b->fail_after)
		return -ENOSPC;
	b->data = realloc(b->data, b->len + len);
	assert(b->data);
	memcpy(b->data + b->len, p, len);
	b->len += len;
	return 0;
}

static int write_tree(struct cfs_node *root, uint32_t min, uint32_t max, struct buf *out,
		      uint32_t *ret_version)
{
	struct cfs_write_options o = { .min_version = min, .max_version = max, .write = buf_write,
				       .userdata = out };
	return cfs_write_image(root, &o, ret_version);
}

static struct cfs_node *parse(const char *text)
{
	struct cfs_node *root = NULL;
	char *err = NULL;
	int r = cfs_dump_parse_mem(text, strlen(text), 0, &root, &err);

	if (r < 0)
		fprintf(stderr, "parse error: %s\n", err);
	assert(r == 0 && root);
	free(err);
	return root;
}

static void expect_parse_error(const char *text, const char *needle)
{
	struct cfs_node *root = NULL;
	char *err = NULL;
	int r = cfs_dump_parse_mem(text, strlen(text), 0, &root, &err);

	assert(r < 0 && !root);
	assert(err);
	if (!strstr(err, needle)) {
		fprintf(stderr, "error '%s' lacks '%s'\n", err, needle);
		abort();
	}
	assert(!strchr(err, '\n'));
	free(err);
}

static struct cfs_node *mk(uint32_t mode, uint64_t size)
{
	struct cfs_node *n = cfs_node_new();

	assert(n);
	n->mode = mode;
	n->size = size;
	n->mtime_sec = 100;
	return n;
}

static void test_api_equals_dump(void)
{
	static const char dump[] =
		"/ 0 40755 3 0 0 0 100.0 - - - user.a=1\n"
		"/dir 0 40700 2 5 6 0 100.0 - - -\n"
		"/dir/small 3 100644 2 0 0 0 100.0 - abc -\n"
		"/big 70000 100644 1 0 0 0 100.0 ab/" "cd" "00000000000000000000000000000000000000000000000000000000000"
		"0 - abcd000000000000000000000000000000000000000000000000000000000000 user.a=1\n"
		"/link 3 @100644 0 0 0 0 0.0 /dir/small - -\n"
		"/sym 3 120777 1 0 0 0 100.0 tgt - -\n";
	struct cfs_node *a = parse(dump), *b = mk(S_IFDIR | 0755, 0), *dir, *small, *big, *link, *sym;
	struct buf ba = { 0 }, bb = { 0 };
	uint8_t d[CFS_DIGEST_SIZE] = { 0xab, 0xcd };

	assert(cfs_node_set_xattr(b, "user.a", "1", 1) == 0);
	dir = mk(S_IFDIR | 0700, 0);
	dir->uid = 5;
	dir->gid = 6;
	assert(cfs_node_add_child(b, dir, "dir") == 0);
	small = mk(S_IFREG | 0644, 3);
	small->content = (uint8_t *)strdup("abc");
	small->nlink = 2;
	assert(cfs_node_add_child(dir, small, "small") == 0);
	big = mk(S_IFREG | 0644, 70000);
	big->payload = strdup("ab/cd000000000000000000000000000000000000000000000000000000000000");
	memcpy(big->digest, d, sizeof(d));
	big->digest_set = true;
	assert(cfs_node_set_xattr(big, "user.a", "1", 1) == 0);
	/* added out of order: children stay sorted */
	sym = mk(S_IFLNK | 0777, 3);
	sym->payload = strdup("tgt");
	assert(cfs_node_add_child(b, sym, "sym") == 0);
	assert(cfs_node_add_child(b, big, "big") == 0);
	link = cfs_node_new();
	link->mode = S_IFREG | 0644;
	link->link_to = small;
	assert(cfs_node_add_child(b, link, "link") == 0);
	struct cfs_node *dup = cfs_node_new();
	assert(cfs_node_add_child(b, dup, "link") == -EEXIST);
	cfs_node_free(dup);
	assert(strcmp(b->children[0]->name, "big") == 0);

	uint32_t va, vb;
	assert(write_tree(a, 0, 1, &ba, &va) == 0);
	assert(write_tree(b, 0, 1, &bb, &vb) == 0);
	assert(va == 0 && vb == 0);
	assert(ba.len == bb.len && memcmp(ba.data, bb.data, ba.len) == 0);
	assert(ba.len % 4096 == 0);

	/* What the reader sees. */
	struct cfs_image *img = NULL;
	struct cfs_inode root_ino, ino, ino2;
	uint64_t nid, nid2;
	unsigned dtype;
	struct cfs_backing bk;
	assert(cfs_img_open_mem(ba.data, ba.len, 0, &img) == 0);
	assert(cfs_img_read_inode(img, cfs_img_root_nid(img), &root_ino) == 0);
	assert(cfs_img_lookup(img, &root_ino, "big", 3, &nid, &dtype) == 0);
	assert(cfs_img_read_inode(img, nid, &ino) == 0);
	assert(ino.size == 70000);
	assert(cfs_img_get_backing(img, &ino, &bk) == 0);
	assert(bk.is_external && bk.has_digest && memcmp(bk.digest, d, sizeof(d)) == 0);
	assert(bk.redirect_len == 1 + strlen(big->payload) && memcmp(bk.redirect, "/ab/cd", 6) == 0);
	assert(cfs_img_lookup(img, &root_ino, "link", 4, &nid2, &dtype) == 0);
	assert(cfs_img_read_inode(img, nid2, &ino2) == 0);
	assert(ino2.nlink == 2);
	assert(cfs_img_lookup(img, &root_ino, "00", 2, &nid, &dtype) == 0); /* whiteouts added */
	assert(cfs_img_lookup(img, &root_ino, "ff", 2, &nid, &dtype) == 0);
	cfs_img_unref(img);

	cfs_node_free(a);
	cfs_node_free(b);
	free(ba.data);
	free(bb.data);
}

static void test_versions_and_errors(void)
{
	static const char wh[] = "/ 0 40755 2 0 0 0 0.0 - - -\n/w 0 20000 1 0 0 0 0.0 - - -\n";
	struct buf out = { 0 };
	struct cfs_node *t;
	uint32_t v;

	t = parse(wh);
	assert(write_tree(t, 0, 1, &out, &v) == 0 && v == 1);
	cfs_node_free(t);
	free(out.data);
	out = (struct buf){ 0 };
	t = parse(wh);
	assert(write_tree(t, 0, 0, &out, &v) == 0 && v == 0);
	cfs_node_free(t);
	free(out.data);
	out = (struct buf){ 0 };
	t = parse(wh);
	assert(write_tree(t, 1, 0, &out, &v) == 0 && v == 1); /* max < min means min */
	cfs_node_free(t);
	free(out.data);
	out = (struct buf){ 0 };
	t = parse(wh);
	assert(write_tree(t, 2, 2, &out, &v) == -EINVAL);
	cfs_node_free(t);

	/* A write error is returned as is. */
	out = (struct buf){ .fail_after = 1 };
	t = parse(wh);
	assert(write_tree(t, 0, 1, &out, &v) == -ENOSPC);
	cfs_node_free(t);
	free(out.data);

	/* Too big for a one-block chunk table, with the path reported. */
	char *bad = NULL;
	out = (struct buf){ 0 };
	t = parse("/ 0 40755 2 0 0 0 0.0 - - -\n/d 0 40755 2 0 0 0 0.0 - - -\n"
		  "/d/huge 9500000000000000 100644 1 0 0 0 0.0 - - -\n");
	struct cfs_write_options o = { .max_version = 1, .write = buf_write, .userdata = &out,
				       .ret_error_path = &bad };
	assert(cfs_write_image(t, &o, NULL) == -EFBIG);
	assert(bad && strcmp(bad, "/d/huge") == 0);
	free(bad);
	cfs_node_free(t);
	free(out.data);
}

static void test_xattr_budget(void)
{
	struct cfs_node *n = mk(S_IFREG | 0644, 0);
	char big[20000];
	size_t total = 0;

	memset(big, 'v', sizeof(big));
	assert(cfs_node_set_xattr(n, "", "x", 1) == -ERANGE);
	assert(cfs_node_set_xattr(n, "user.a", big, 70000) == -EINVAL);
	assert(cfs_node_set_xattr(n, "user.a", big, 20000) == 0);
	assert(cfs_node_set_xattr(n, "user.b", big, 20000) == -ERANGE); /* 32767 budget */
	assert(cfs_node_set_xattr(n, "user.a", big, 10) == 0);           /* replacing frees */
	assert(cfs_node_set_xattr(n, "user.b", big, 20000) == 0);
	for (size_t i = 0; i < n->n_xattrs; i++)
		total += n->xattrs[i].value_len;
	assert(total == 20010);
	assert(cfs_node_get_xattr(n, "user.a")->value_len == 10);
	cfs_node_free(n);
}

/* Many xattrs on one node go through the index by name: replacing moves
 * the last one into the freed place (upstream's order), removing frees the
 * name, and lookups agree with the array throughout. */
static void test_xattr_index(void)
{
	enum { N = 1500 }; /* within the 32767-byte budget */
	struct cfs_node *n = mk(S_IFREG | 0644, 0);
	char key[32];

	for (unsigned i = 0; i < N; i++) {
		snprintf(key, sizeof(key), "user.k%u", i);
		assert(cfs_node_set_xattr(n, key, "v", 1) == 0);
	}
	assert(n->n_xattrs == N);
	assert(cfs_node_set_xattr(n, "user.k5", "new", 3) == 0); /* k1499 takes its place */
	assert(strcmp(n->xattrs[5].key, "user.k1499") == 0);
	assert(strcmp(n->xattrs[N - 1].key, "user.k5") == 0);
	for (unsigned i = 0; i < N; i += 2) {
		snprintf(key, sizeof(key), "user.k%u", i);
		assert(cfs_node_unset_xattr(n, key) == 0);
		assert(cfs_node_unset_xattr(n, key) == -ENODATA);
	}
	assert(n->n_xattrs == N / 2);
	for (unsigned i = 0; i < N; i++) {
		const struct cfs_xattr *x;

		snprintf(key, sizeof(key), "user.k%u", i);
		x = cfs_node_get_xattr(n, key);
		assert(i % 2 ? x && strcmp(x->key, key) == 0 && x->value_len == (i == 5 ? 3 : 1) : !x);
	}
	for (size_t i = 0; i < n->n_xattrs; i++)
		assert(cfs_node_get_xattr(n, n->xattrs[i].key) == &n->xattrs[i]);
	cfs_node_free(n);
}

static void test_parse_errors(void)
{
	expect_parse_error("", "no files");
	expect_parse_error("/ 0 100644 1 0 0 0 0.0 - - -\n", "root must be a directory");
	expect_parse_error("/ 0 40755 1 0 0 0 0.0 - - -\n/ 0 40755 1 0 0 0 0.0 - - -\n", "line 2");
	expect_parse_error("/ 0 40755 1 0 0 0 0.0 - - -\n/a 0 100644 1 0 0 0 x.0 - - -\n", "mtime");
	expect_parse_error("/ 0 40755 1 0 0 0 0.0 - - -\n/a 0 100644 1 0 0 0 0.0 - - - k=\\x4\n",
			   "escape");
	expect_parse_error("/ 0 40755 1 0 0 0 0.0 - - -\n/a 0 @100644 1 0 0 0 0.0 /nope - -\n",
			   "no target");
	expect_parse_error("/ 0 40755 1 0 0 0 0.0 - - -\n/a 1 100644 1 0 0 0 0.0 - - zz\n", "digest");
	/* A chain that runs into a loop not through its start (this hung). */
	expect_parse_error("/ 0 40755 1 0 0 0 0.0 - - -\n"
			   "/a 0 @100644 1 0 0 0 0.0 /b - -\n"
			   "/b 0 @100644 1 0 0 0 0.0 /c - -\n"
			   "/c 0 @100644 1 0 0 0 0.0 /b - -\n",
			   "cycle");
	expect_parse_error("/ 0 40755 1 0 0 0 0.0 - - -\n/a 0 @100644 1 0 0 0 0.0 /a - -\n",
			   "self-referential");
	/* A malformed digest where it is unused is ignored, as upstream does. */
	cfs_node_free(parse("/ 0 40755 1 0 0 0 0.0 - - zz\n"));
	/* Strict mode. */
	struct cfs_node *root = NULL;
	char *err = NULL;
	static const char nonl[] = "/ 0 40755 1 0 0 0 0.0 - - -";
	assert(cfs_dump_parse_mem(nonl, strlen(nonl), CFS_PARSE_STRICT, &root, &err) < 0);
	assert(strstr(err, "newline"));
	free(err);
	assert(cfs_dump_parse_mem(nonl, strlen(nonl), 0, &root, &err) == 0);
	cfs_node_free(root);
}

/* Links to links, listed last link first: each must resolve to the inode,
 * in linear time (this took a minute for 50000 links). */
static void test_link_chain(void)
{
	enum { N = 50000 };
	size_t cap = 64 * (N + 2), len = 0;
	char *text = malloc(cap);
	struct cfs_node *root, *f0;
	struct buf out = { 0 };

	assert(text);
	len += (size_t)snprintf(text + len, cap - len, "/ 0 40755 1 0 0 0 0.0 - - -\n");
	for (unsigned i = N - 1; i > 0; i--)
		len += (size_t)snprintf(text + len, cap - len,
					"/f%u 0 @100644 1 0 0 0 0.0 /f%u - -\n", i, i - 1);
	len += (size_t)snprintf(text + len, cap - len, "/f0 5 100644 1 0 0 0 0.0 - hello -\n");
	assert(len < cap);
	root = parse(text);
	f0 = cfs_node_lookup_child(root, "f0");
	assert(f0 && !f0->link_to);
	for (size_t i = 0; i < root->n_children; i++)
		assert(root->children[i] == f0 || cfs_node_follow(root->children[i]) == f0);
	assert(write_tree(root, 0, 1, &out, NULL) == 0);
	cfs_node_free(root);
	free(out.data);
	free(text);
}

static size_t count_entries(const char *path)
{
	DIR *d = opendir(path);
	struct dirent *e;
	size_t n = 0;

	if (!d)
		return 0;
	while ((e = readdir(d)))
		if (strcmp(e->d_name, ".") && strcmp(e->d_name, ".."))
			n++;
	closedir(d);
	return n;
}

/* The digest store hashes the copy it makes: a source whose content is no
 * longer the one the caller hashed (it changed in between) is refused with
 * -ESTALE and leaves neither an object nor a temporary file; the unchanged
 * source is stored under its name with the same bytes. */
static void test_store_import_checks_copy(void)
{
	enum { LEN = 3 * 4096 + 123 };
	char store[] = "/tmp/test-writer-store-XXXXXX", src[] = "/tmp/test-writer-src-XXXXXX";
	char hex[2 * CFS_DIGEST_SIZE + 1], path[4096 + 80], sub[4096];
	uint8_t good[CFS_DIGEST_SIZE], stale[CFS_DIGEST_SIZE];
	static uint8_t data[LEN], back[LEN];
	int fd, ofd;

	for (size_t i = 0; i < LEN; i++)
		data[i] = (uint8_t)(i * 7 + i / 251);
	assert(mkdtemp(store));
	fd = mkstemp(src);
	assert(fd >= 0);
	assert(pwrite(fd, data, LEN, 0) == LEN);
	assert(cfs_fsverity_digest_fd(fd, good) == 0);

	/* What the caller hashed before the source changed (same size). */
	data[5000] ^= 0x40;
	assert(cfs_fsverity_digest_mem(data, LEN, stale) == 0);
	assert(memcmp(stale, good, CFS_DIGEST_SIZE) != 0);
	cfs_digest_to_hex(stale, hex);
	snprintf(sub, sizeof(sub), "%s/%.2s", store, hex);
	assert(cfs_store_import(store, fd, stale) == -ESTALE);
	assert(count_entries(sub) == 0); /* no object, no temporary file */
	assert(count_entries(store) <= 1);

	/* A different size than the caller saw is refused the same way. */
	assert(ftruncate(fd, LEN + 1) == 0);
	cfs_digest_to_hex(good, hex);
	snprintf(sub, sizeof(sub), "%s/%.2s", store, hex);
	assert(cfs_store_import(store, fd, good) == -ESTALE);
	assert(count_entries(sub) == 0);
	assert(ftruncate(fd, LEN) == 0);

	/* Unchanged: stored, under its name, with its bytes; a second import
	 * keeps the existing object. */
	data[5000] ^= 0x40;
	assert(cfs_store_import(store, fd, good) == 0);
	assert(cfs_store_import(store, fd, good) == 0);
	assert(count_entries(sub) == 1);
	snprintf(path, sizeof(path), "%s/%s", sub, hex + 2);
	ofd = open(path, O_RDONLY);
	assert(ofd >= 0);
	assert(pread(ofd, back, LEN, 0) == LEN && memcmp(back, data, LEN) == 0);
	close(ofd);

	close(fd);
	unlink(src);
	unlink(path);
	rmdir(sub);
	snprintf(sub, sizeof(sub), "%s/%.2s", store, (cfs_digest_to_hex(stale, hex), hex));
	rmdir(sub);
	assert(rmdir(store) == 0);
}

int main(void)
{
	test_api_equals_dump();
	test_versions_and_errors();
	test_xattr_budget();
	test_xattr_index();
	test_parse_errors();
	test_link_chain();
	test_store_import_checks_copy();
	printf("test-writer: all passed\n");
	return 0;
}
