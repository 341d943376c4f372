/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * The Merkle tree cache.  In memory: trees of objects that are no longer
 * open, in an LRU bounded by bytes, keyed by digest.  On disk (optional):
 * one file per digest in a cache directory outside the object store,
 * holding the leaf level only; it is untrusted when read back: the upper
 * levels, the root hash and the file digest are recomputed from the leaves
 * (about 1/128 of the object's size to hash) and must match the digest the
 * image expects, else the file is removed and the tree rebuilt from data.
 * Trees stored in the object store itself (CFS_STORE_TREES_DIR, written by
 * the tools that fill it) have the same format and get the same check.
 */
#include <assert.h>
#include <endian.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cas-internal.h"

#define DEFAULT_TREE_CACHE_BYTES (64ULL << 20)
#define DEFAULT_MIN_PERSIST_SIZE CFS_STORE_TREE_MIN_SIZE

static const char TREE_MAGIC[8] = { 'C', 'F', 'S', 'M', 'R', 'K', 'L', '1' };

/* On-disk header of a persisted tree; the leaf level follows. */
struct tree_file_header {
	char magic[8];
	__le32 version;        /* 1 */
	__le32 log_blocksize;  /* 12 */
	__le64 data_size;
	__le64 leaf_bytes;
	uint8_t digest[CFS_DIGEST_SIZE];
};
static_assert(sizeof(struct tree_file_header) == 64, "tree cache header layout");

/* mkdir -p, mode 0700 for what it creates. */
static int mkdir_parents(const char *path)
{
	_cleanup_free_ char *p = strdup(path);

	if (!p)
		return -ENOMEM;
	for (char *s = p + 1; *s; s++) {
		if (*s != '/')
			continue;
		*s = '\0';
		if (mkdir(p, 0700) < 0 && errno != EEXIST)
			return -errno;
		*s = '/';
	}
	if (mkdir(p, 0700) < 0 && errno != EEXIST)
		return -errno;
	return 0;
}

/* The absolute, symlink-free path @path will have once created: the real
 * path of its longest existing prefix plus the missing components (which
 * may not be "." or ".."). */
static int resolve_future_path(const char *path, char **ret_path)
{
	_cleanup_free_ char *p = strdup(path), *real = NULL;
	const char *tail = NULL;
	char *out;

	if (!p)
		return -ENOMEM;
	for (;;) {
		char *slash;

		real = realpath(p[0] ? p : ".", NULL);
		if (real)
			break;
		if (errno != ENOENT)
			return -errno;
		slash = strrchr(p, '/');
		while (slash && slash > p && slash[-1] == '/')
			slash--;
		if (!slash) {
			tail = path;
			p[0] = '\0';
		} else {
			tail = path + (slash - p) + 1;
			*slash = '\0';
			if (slash == p) {
				p[0] = '/';
				p[1] = '\0';
			}
		}
	}
	if (tail) {
		for (const char *c = tail; *c;) {
			size_t n = strcspn(c, "/");

			if ((n == 1 && c[0] == '.') || (n == 2 && c[0] == '.' && c[1] == '.'))
				return -EINVAL;
			c += n;
			c += strspn(c, "/");
		}
		if (asprintf(&out, "%s/%s", strcmp(real, "/") == 0 ? "" : real, tail) < 0)
			return -ENOMEM;
	} else {
		out = steal_ptr(&real);
	}
	*ret_path = out;
	return 0;
}

/* Is @inner equal to or below @outer (both resolved)? */
static bool path_within(const char *inner, const char *outer)
{
	size_t n = strlen(outer);

	if (n == 1 && outer[0] == '/')
		return true;
	return strncmp(inner, outer, n) == 0 && (inner[n] == '\0' || inner[n] == '/');
}

int cfs_tree_cache_init(struct cfs_tree_cache *tc, const struct cfs_cas_options *opts,
			const char *const *basedirs, size_t n_basedirs)
{
	memset(tc, 0, sizeof(*tc));
	tc->dirfd = -1;
	tc->max_bytes = opts->tree_cache_bytes ? opts->tree_cache_bytes : DEFAULT_TREE_CACHE_BYTES;
	tc->min_persist_size = opts->tree_cache_min_size ? opts->tree_cache_min_size : DEFAULT_MIN_PERSIST_SIZE;
	tc->nbuckets = 256;
	tc->buckets = calloc(tc->nbuckets, sizeof(*tc->buckets));
	if (!tc->buckets)
		return -ENOMEM;

	if (opts->tree_cache_dir && opts->tree_cache_dir[0]) {
		_cleanup_free_ char *real = NULL;
		int r = resolve_future_path(opts->tree_cache_dir, &real);

		if (r < 0)
			return r;
		/* Other tools share the store: never write into it (checked
		 * before creating anything). */
		for (size_t i = 0; i < n_basedirs; i++) {
			_cleanup_free_ char *base = realpath(basedirs[i], NULL);

			if (base && path_within(real, base))
				return -EXDEV;
		}
		r = mkdir_parents(real);
		if (r < 0)
			return r;
		tc->dirfd = open(real, O_RDONLY | O_DIRECTORY | O_CLOEXEC | O_NOFOLLOW);
		if (tc->dirfd < 0)
			return -errno;
	}
	return 0;
}

const char *cfs_tree_cache_strerror(int r)
{
	switch (r) {
	case -EXDEV:
		return "inside an object store directory";
	case -EINVAL:
		return "'.' or '..' in the part of the path that does not exist yet";
	default:
		return strerror(-r);
	}
}

void cfs_tree_cache_fini(struct cfs_tree_cache *tc)
{
	while (tc->lru_head) {
		struct cfs_merkle *t = tc->lru_head;

		tc->lru_head = t->lru_next;
		cfs_merkle_free(t);
	}
	free(tc->buckets);
	tc->buckets = NULL;
	if (tc->dirfd >= 0)
		close(tc->dirfd);
	tc->dirfd = -1;
}

static size_t bucket_of(const struct cfs_tree_cache *tc, const uint8_t digest[CFS_DIGEST_SIZE])
{
	uint64_t h;

	memcpy(&h, digest, sizeof(h)); /* a digest is already uniformly spread */
	return (size_t)(h % tc->nbuckets);
}

static void hash_remove(struct cfs_tree_cache *tc, struct cfs_merkle *t)
{
	struct cfs_merkle **pp = &tc->buckets[bucket_of(tc, t->digest)];

	for (; *pp; pp = &(*pp)->hash_next) {
		if (*pp == t) {
			*pp = t->hash_next;
			t->hash_next = NULL;
			tc->count--;
			return;
		}
	}
}

static void lru_unlink(struct cfs_tree_cache *tc, struct cfs_merkle *t)
{
	if (t->lru_prev)
		t->lru_prev->lru_next = t->lru_next;
	else
		tc->lru_head = t->lru_next;
	if (t->lru_next)
		t->lru_next->lru_prev = t->lru_prev;
	else
		tc->lru_tail = t->lru_prev;
	t->lru_prev = t->lru_next = NULL;
	tc->bytes -= cfs_merkle_bytes(t);
	hash_remove(tc, t);
}

struct cfs_merkle *cfs_tree_cache_take(struct cfs_tree_cache *tc, const uint8_t digest[CFS_DIGEST_SIZE])
{
	for (struct cfs_merkle *t = tc->buckets[bucket_of(tc, digest)]; t; t = t->hash_next) {
		if (memcmp(t->digest, digest, CFS_DIGEST_SIZE) == 0) {
			lru_unlink(tc, t);
			return t;
		}
	}
	return NULL;
}

static void grow(struct cfs_tree_cache *tc)
{
	size_t n = tc->nbuckets * 2;
	struct cfs_merkle **nb = calloc(n, sizeof(*nb));

	if (!nb)
		return; /* longer chains, still correct */
	for (size_t i = 0; i < tc->nbuckets; i++) {
		struct cfs_merkle *t = tc->buckets[i];

		while (t) {
			struct cfs_merkle *next = t->hash_next;
			uint64_t h;

			memcpy(&h, t->digest, sizeof(h));
			t->hash_next = nb[h % n];
			nb[h % n] = t;
			t = next;
		}
	}
	free(tc->buckets);
	tc->buckets = nb;
	tc->nbuckets = n;
}

void cfs_tree_cache_put(struct cfs_tree_cache *tc, struct cfs_merkle *t)
{
	uint64_t sz = cfs_merkle_bytes(t);
	struct cfs_merkle *old;

	/* The tree of a small object costs no more to rebuild than the one
	 * read of the object that rebuilding it takes: not worth memory. */
	if (sz > tc->max_bytes || t->data_size <= tc->min_persist_size) {
		cfs_merkle_free(t);
		return;
	}
	/* Same digest already cached (two opens raced): keep one. */
	old = cfs_tree_cache_take(tc, t->digest);
	cfs_merkle_free(old);
	while (tc->lru_tail && tc->bytes + sz > tc->max_bytes) {
		struct cfs_merkle *victim = tc->lru_tail;

		lru_unlink(tc, victim);
		cfs_merkle_free(victim);
	}
	t->lru_prev = NULL;
	t->lru_next = tc->lru_head;
	if (tc->lru_head)
		tc->lru_head->lru_prev = t;
	tc->lru_head = t;
	if (!tc->lru_tail)
		tc->lru_tail = t;
	tc->bytes += sz;
	if (tc->count >= tc->nbuckets)
		grow(tc);
	{
		size_t b = bucket_of(tc, t->digest);

		t->hash_next = tc->buckets[b];
		tc->buckets[b] = t;
		tc->count++;
	}
}

int cfs_tree_file_read(int fd, uint64_t size, const uint8_t digest[CFS_DIGEST_SIZE], struct cfs_merkle **ret_tree)
{
	struct tree_file_header h;
	_cleanup_free_ void *leaves = NULL;
	uint64_t blocks = size == 0 ? 0 : (size - 1) / CFS_VERITY_BLOCK_SIZE + 1;
	uint64_t leaf_bytes = (blocks + CFS_HASHES_PER_BLOCK - 1) / CFS_HASHES_PER_BLOCK * CFS_VERITY_BLOCK_SIZE;
	struct stat st;
	ssize_t n;

	if (blocks <= 1 || blocks > CFS_MERKLE_MAX_LEAF_BYTES / CFS_DIGEST_SIZE)
		return -EBADMSG;
	if (fstat(fd, &st) < 0)
		return -errno;
	if (!S_ISREG(st.st_mode) || (uint64_t)st.st_size != sizeof(h) + leaf_bytes)
		return -EBADMSG;
	n = cfs_pread_full(fd, &h, sizeof(h), 0);
	if (n < 0)
		return (int)n;
	if (n != (ssize_t)sizeof(h) || memcmp(h.magic, TREE_MAGIC, sizeof(TREE_MAGIC)) != 0 ||
	    le32toh(h.version) != 1 || le32toh(h.log_blocksize) != CFS_BLOCK_SHIFT ||
	    le64toh(h.data_size) != size || le64toh(h.leaf_bytes) != leaf_bytes ||
	    memcmp(h.digest, digest, CFS_DIGEST_SIZE) != 0)
		return -EBADMSG;
	leaves = malloc(leaf_bytes);
	if (!leaves)
		return -ENOMEM;
	n = cfs_pread_full(fd, leaves, leaf_bytes, sizeof(h));
	if (n < 0)
		return (int)n;
	if ((uint64_t)n != leaf_bytes)
		return -EBADMSG;
	return cfs_merkle_from_leaves(size, leaves, leaf_bytes, digest, ret_tree);
}

int cfs_tree_cache_load(struct cfs_tree_cache *tc, uint64_t size, const uint8_t digest[CFS_DIGEST_SIZE],
			struct cfs_merkle **ret_tree)
{
	char name[2 * CFS_DIGEST_SIZE + 1];
	_cleanup_close_ int fd = -EBADF;
	int r;

	if (tc->dirfd < 0 || size <= CFS_VERITY_BLOCK_SIZE)
		return -ENOENT;
	cfs_digest_to_hex(digest, name);
	fd = openat(tc->dirfd, name, O_RDONLY | O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK);
	if (fd < 0)
		return errno == ENOENT ? -ENOENT : -errno;
	r = cfs_tree_file_read(fd, size, digest, ret_tree);
	if (r == -EBADMSG)
		/* Untrusted and wrong: drop it, the caller rebuilds from data. */
		(void)unlinkat(tc->dirfd, name, 0);
	return r;
}

int cfs_tree_file_write(int dirfd, const char *name, const struct cfs_merkle *t, mode_t mode)
{
	static _Atomic unsigned long counter;
	char tmp[2 * CFS_DIGEST_SIZE + 64];
	const char *base = strrchr(name, '/');
	static const uint8_t zeros[CFS_VERITY_BLOCK_SIZE];
	uint64_t leaf_bytes = cfs_merkle_leaf_bytes(t), used = t->data_blocks * CFS_DIGEST_SIZE;
	struct tree_file_header h;
	_cleanup_close_ int fd = -EBADF;
	int r;

	if (leaf_bytes == 0)
		return -EINVAL;
	/* The temporary file goes beside the final one (same directory). */
	base = base ? base + 1 : name;
	snprintf(tmp, sizeof(tmp), "%.*s.%.16s.%d.%lu.tmp", (int)(base - name), name, base, (int)getpid(),
		 atomic_fetch_add(&counter, 1));
	fd = openat(dirfd, tmp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, mode);
	if (fd < 0)
		return -errno;

	memset(&h, 0, sizeof(h));
	memcpy(h.magic, TREE_MAGIC, sizeof(TREE_MAGIC));
	h.version = htole32(1);
	h.log_blocksize = htole32(CFS_BLOCK_SHIFT);
	h.data_size = htole64(t->data_size);
	h.leaf_bytes = htole64(leaf_bytes);
	memcpy(h.digest, t->digest, CFS_DIGEST_SIZE);
	r = cfs_write_all(fd, &h, sizeof(h));
	if (r == 0)
		r = cfs_write_all(fd, t->leaves, used);
	if (r == 0)
		r = cfs_write_all(fd, zeros, leaf_bytes - used);
	if (r == 0 && fchmod(fd, mode) < 0) /* not narrowed by the umask */
		r = -errno;
	if (r == 0 && close(steal_fd(&fd)) < 0)
		r = -errno;
	/* No fsync: a torn file after a crash fails the check and is rebuilt. */
	if (r == 0 && renameat(dirfd, tmp, dirfd, name) < 0)
		r = -errno;
	if (r < 0) {
		(void)unlinkat(dirfd, tmp, 0);
		return r;
	}
	return 0;
}

int cfs_tree_cache_store(struct cfs_tree_cache *tc, const struct cfs_merkle *t)
{
	char name[2 * CFS_DIGEST_SIZE + 1];
	int r;

	if (tc->dirfd < 0 || !t->leaves || t->data_size <= tc->min_persist_size)
		return 0;
	cfs_digest_to_hex(t->digest, name);
	r = cfs_tree_file_write(tc->dirfd, name, t, 0600);
	return r < 0 ? r : 1;
}

void cfs_object_path(const uint8_t digest[CFS_DIGEST_SIZE], char out[2 * CFS_DIGEST_SIZE + 2])
{
	char hex[2 * CFS_DIGEST_SIZE + 1];

	cfs_digest_to_hex(digest, hex);
	out[0] = hex[0];
	out[1] = hex[1];
	out[2] = '/';
	memcpy(out + 3, hex + 2, 2 * CFS_DIGEST_SIZE - 2 + 1);
}

int cfs_store_tree_write(int store_dirfd, const struct cfs_merkle *t, uint64_t min_size)
{
	char name[2 * CFS_DIGEST_SIZE + 2], sub[3];
	_cleanup_close_ int top = -EBADF, dir = -EBADF;
	int r;

	if (!t->leaves || t->data_size <= min_size)
		return 0;
	cfs_object_path(t->digest, name);
	memcpy(sub, name, 2);
	sub[2] = '\0';
	/* Readable by every user of a shared store, like the objects. */
	if (mkdirat(store_dirfd, CFS_STORE_TREES_DIR, 0755) < 0 && errno != EEXIST)
		return -errno;
	top = openat(store_dirfd, CFS_STORE_TREES_DIR, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
	if (top < 0)
		return -errno;
	if (mkdirat(top, sub, 0755) < 0 && errno != EEXIST)
		return -errno;
	dir = openat(top, sub, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
	if (dir < 0)
		return -errno;
	r = cfs_tree_file_write(dir, name + 3, t, 0644);
	return r < 0 ? r : 1;
}
