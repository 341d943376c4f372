/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Private to cas/: the Merkle tree, the I/O backends, the tree cache and the
 * object store internals.  Nothing here is part of the public API.
 */
#pragma once

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/stat.h>
#include <time.h>

#include "cas.h"

#define CFS_BLOCK_SHIFT 12
#define CFS_HASHES_PER_BLOCK (CFS_VERITY_BLOCK_SIZE / CFS_DIGEST_SIZE) /* 128 */
/* Trees are kept in memory: refuse (-EFBIG) objects whose leaf level would
 * exceed this, i.e. objects over 512 GiB, rather than exhaust memory. */
#define CFS_MERKLE_MAX_LEAF_BYTES (4ULL << 30)
/* Objects up to this size whose tree is built from their data hand the
 * verified copy of that pass to the caller (cfs_object_pread_whole()). */
#define CFS_KEEP_WHOLE_MAX (16ULL << 20)

/* SHA-256 of @len bytes with a per-thread OpenSSL context (no locks). */
void cfs_sha256(const void *data, size_t len, uint8_t out[CFS_DIGEST_SIZE]);
/* SHA-256 of one block: @len <= 4096 bytes, zero-padded to 4096. */
void cfs_sha256_block(const void *data, size_t len, uint8_t out[CFS_DIGEST_SIZE]);

/*
 * The trusted part of an fs-verity Merkle tree (SHA-256, 4096-byte blocks,
 * no salt): the hash of every data block.  It is only ever created checked:
 * built from the data, or rebuilt from an untrusted leaf level, in both
 * cases hashed up to the file digest, which must be the expected one.  The
 * upper levels are not kept; nothing reads them after that check.
 * Immutable once made, so readers need no lock.
 */
struct cfs_merkle {
	uint64_t data_size;
	uint64_t data_blocks;
	uint8_t *leaves;                /* data_blocks hashes; NULL for <= 1 block */
	uint8_t root_hash[CFS_DIGEST_SIZE]; /* for one block: its hash */
	uint8_t digest[CFS_DIGEST_SIZE];

	/* tree cache linkage, under the cas lock */
	struct cfs_merkle *lru_prev, *lru_next, *hash_next;
};

/* An empty tree for @data_size bytes (leaves allocated, not filled).
 * -EFBIG past CFS_MERKLE_MAX_LEAF_BYTES. */
int cfs_merkle_new(uint64_t data_size, struct cfs_merkle **ret_tree);
struct cfs_merkle *cfs_merkle_free(struct cfs_merkle *t);
CFS_DEFINE_CLEANUP(struct cfs_merkle *, cfs_merkle_free)
/* Memory held by @t. */
static inline uint64_t cfs_merkle_bytes(const struct cfs_merkle *t)
{
	return sizeof(*t) + (t->leaves ? t->data_blocks * CFS_DIGEST_SIZE : 0);
}

/* The fs-verity file digest for @data_size and @root_hash. */
void cfs_merkle_file_digest(uint64_t data_size, const uint8_t root_hash[CFS_DIGEST_SIZE],
			    uint8_t ret_digest[CFS_DIGEST_SIZE]);

/* Check a data block whose SHA-256 (zero-padded) is @hash against its leaf:
 * 0 or -EIO.  Lock-free. */
int cfs_merkle_verify_hash(const struct cfs_merkle *t, uint64_t blk, const uint8_t hash[CFS_DIGEST_SIZE]);

struct cfs_io;

/*
 * Build the tree of the @size bytes readable from @fd, reading ahead
 * through @io, in one pass that hashes every block once.  The digest must
 * equal @expected, else -EIO (@expected NULL: no check, for tools that
 * compute digests).  A file shorter or longer than @size is -EIO too.
 * With @ret_data, the data read is kept and handed over (malloc'ed, @size
 * bytes): it is the content the digest names.
 */
int cfs_merkle_build_fd(struct cfs_io *io, int fd, uint64_t size, const uint8_t expected[CFS_DIGEST_SIZE],
			void **ret_data, struct cfs_merkle **ret_tree);

/* The tree of @size bytes in memory. */
int cfs_merkle_from_mem(const void *data, uint64_t size, struct cfs_merkle **ret_tree);

/*
 * Rebuild a tree from an untrusted copy of its leaf level (as stored: the
 * leaves padded to whole blocks): recompute the upper levels, the root hash
 * and the file digest, which must equal @expected (else -EBADMSG).
 */
int cfs_merkle_from_leaves(uint64_t size, const void *leaves, size_t leaves_len,
			   const uint8_t expected[CFS_DIGEST_SIZE], struct cfs_merkle **ret_tree);

/* Bytes of the stored leaf level of @t (0 for a file of at most one block):
 * the leaves padded to whole blocks, as FS_IOC_READ_VERITY_METADATA has it. */
uint64_t cfs_merkle_leaf_bytes(const struct cfs_merkle *t);

/* ---- I/O ---- */

/* One read of @len bytes at @off into @buf; @res receives the byte count
 * (possibly short at EOF) or -errno. */
struct cfs_io_seg {
	void *buf;
	uint64_t off;
	uint32_t len;
	int res;
};

typedef int (*cfs_io_done_fn)(void *userdata, struct cfs_io_seg *seg);

struct cfs_io_ring;

struct cfs_io {
	enum cfs_io_backend backend; /* CFS_IO_URING or CFS_IO_PREAD */
	pthread_key_t key;           /* per-thread ring */
	bool have_key;
	pthread_mutex_t lock;        /* protects @rings (ring creation/teardown) */
	struct cfs_io_ring *rings;
};

/* Choose the backend: @want AUTO tries io_uring and falls back to pread when
 * the kernel refuses (ENOSYS, EPERM, disabled); URING fails if unusable. */
int cfs_io_init(struct cfs_io *io, enum cfs_io_backend want);
void cfs_io_fini(struct cfs_io *io);

/* Read every segment of @segs (queue depth up to @n) and call @done for each
 * as it completes (any order).  Each segment is read fully unless EOF is
 * reached.  Returns the first negative value @done returned, else 0. */
int cfs_io_read_segs(struct cfs_io *io, int fd, struct cfs_io_seg *segs, unsigned n,
		     cfs_io_done_fn done, void *userdata);

/* Sequential reader with read-ahead, for building trees. */
struct cfs_seqreader;
int cfs_seqreader_new(struct cfs_io *io, int fd, uint64_t size, struct cfs_seqreader **ret_reader);
/* Exactly @count bytes, in order; -EBADMSG if the file ends early. */
int cfs_seqreader_read(struct cfs_seqreader *r, void *buf, size_t count);
/* 0 if the file ends exactly at the size given, -EBADMSG if it goes on. */
int cfs_seqreader_check_eof(struct cfs_seqreader *r);
struct cfs_seqreader *cfs_seqreader_free(struct cfs_seqreader *r);
CFS_DEFINE_CLEANUP(struct cfs_seqreader *, cfs_seqreader_free)

/* ---- tree cache ---- */

/* Trees stored beside the objects: BASEDIR/.cfs-trees/xx/yyyy..., written
 * by the tools that fill the store (mkcomposefs --digest-store, composefs-
 * info verify), only read by the daemon. */
#define CFS_STORE_TREES_DIR ".cfs-trees"
/* Trees of smaller objects are not stored: one read of the object costs
 * about what reading its tree would. */
#define CFS_STORE_TREE_MIN_SIZE (128ULL << 10)

struct cfs_tree_cache {
	uint64_t max_bytes, bytes;
	uint64_t min_persist_size;
	int dirfd;                      /* -1: not persisted */
	struct cfs_merkle *lru_head, *lru_tail; /* head = most recent */
	struct cfs_merkle **buckets;
	size_t nbuckets, count;
};

int cfs_tree_cache_init(struct cfs_tree_cache *tc, const struct cfs_cas_options *opts,
			const char *const *basedirs, size_t n_basedirs);
void cfs_tree_cache_fini(struct cfs_tree_cache *tc);
/* Take a tree for @digest out of the memory LRU (caller holds the cas lock). */
struct cfs_merkle *cfs_tree_cache_take(struct cfs_tree_cache *tc, const uint8_t digest[CFS_DIGEST_SIZE]);
/* Give a tree to the memory LRU, evicting old ones (caller holds the cas lock). */
void cfs_tree_cache_put(struct cfs_tree_cache *tc, struct cfs_merkle *t);
/* Persisted copy: 0 and a checked tree, -ENOENT if there is none, -EBADMSG if
 * it was corrupt (and has been removed). No lock needed. */
int cfs_tree_cache_load(struct cfs_tree_cache *tc, uint64_t size, const uint8_t digest[CFS_DIGEST_SIZE],
			struct cfs_merkle **ret_tree);
/* Persist @t if there is a cache directory and @t is worth it: 1 if
 * written, 0 if not (no directory, small object), or -errno. */
int cfs_tree_cache_store(struct cfs_tree_cache *tc, const struct cfs_merkle *t);

/* A stored tree (header and leaf level) open as @fd, untrusted: 0 and the
 * checked tree, -EBADMSG if it is not the tree of @size bytes with @digest. */
int cfs_tree_file_read(int fd, uint64_t size, const uint8_t digest[CFS_DIGEST_SIZE], struct cfs_merkle **ret_tree);
/* Write @t as @name in @dirfd: a temporary file renamed into place, so a
 * reader never sees a partial one.  -errno on failure, nothing left. */
int cfs_tree_file_write(int dirfd, const char *name, const struct cfs_merkle *t, mode_t mode);
/* The tree of @t into STORE/.cfs-trees/xx/yyyy... (directories created);
 * 1 if written, 0 if @t is below @min_size or has no leaves, or -errno. */
int cfs_store_tree_write(int store_dirfd, const struct cfs_merkle *t, uint64_t min_size);
/* The path of @digest's object in a store, "xx/yyyy...", which is also the
 * name of its tree below CFS_STORE_TREES_DIR. */
void cfs_object_path(const uint8_t digest[CFS_DIGEST_SIZE], char out[2 * CFS_DIGEST_SIZE + 2]);

/* ---- objects ---- */

enum cfs_object_state {
	CFS_OBJ_INIT,
	CFS_OBJ_READY,
	CFS_OBJ_FAILED,
};

/* What a backing file was when its data failed the digest: the same file
 * unchanged fails again without being read. */
struct cfs_file_ident {
	dev_t dev;
	ino_t ino;
	off_t size;
	struct timespec mtime, ctime;
};

struct cfs_object {
	atomic_uint refcount;         /* 0: idle, on the cas's idle list */
	struct cfs_cas *cas;          /* borrowed; a referenced object holds a cas reference */
	struct cfs_object *hash_next; /* under cas->lock */
	struct cfs_object *idle_prev, *idle_next; /* under cas->lock */
	bool idle;                    /* under cas->lock */
	uint64_t hash;
	char *key;                    /* relative path in the store */
	bool has_digest;
	uint8_t digest[CFS_DIGEST_SIZE];

	enum cfs_object_state state;  /* under cas->lock; INIT until set up */
	int init_error;

	/* Written by the opener while INIT, immutable once READY (published
	 * to other threads through cas->lock): */
	int fd;
	size_t basedir;               /* index of the basedir holding it */
	uint64_t size;
	enum cfs_verify_method method;

	/* USERSPACE: the tree, set once under @lock (then immutable, read
	 * with an acquire load); built at the first read that needs it. */
	pthread_mutex_t lock;
	pthread_cond_t cond;
	bool building;                /* under @lock */
	bool failed;                  /* under @lock: the data did not match */
	struct cfs_file_ident failed_ident;
	struct cfs_merkle *_Atomic tree;
	bool data_checked;            /* tree was built from this fd's data */
};

struct cfs_cas {
	atomic_uint refcount;
	struct cfs_cas_options opts;
	struct cfs_verity_ops verity;
	char **basedirs;
	int *basedir_fds;
	size_t n_basedirs;
	bool have_openat2;            /* cleared once openat2 returns ENOSYS */
	struct cfs_io io;

	pthread_mutex_t lock;         /* objects table, idle list, object states, tree cache */
	pthread_cond_t init_cond;     /* an object left the INIT state */
	struct cfs_object **buckets;
	size_t nbuckets, nobjects;
	/* Objects nobody holds, most recently used first, kept open (with
	 * their trees) up to opts.max_idle_objects. */
	struct cfs_object *idle_head, *idle_tail;
	size_t n_idle;
	struct cfs_tree_cache trees;

	struct {
		_Atomic uint64_t objects_opened, trees_built, trees_from_memory, trees_from_disk,
			trees_from_store, trees_rejected, trees_written, tree_write_errors,
			blocks_failed, bytes_read, blocks_hashed, objects_evicted, read_io_errors,
			objects_mismatched, size_mismatches;
		_Atomic uint64_t by_method[3];
	} stats;
};

/* paths.c.  A redirect from the image as a store path: one leading '/'
 * dropped, then no empty, "." or ".." component and no NUL byte (-EPERM),
 * -ENAMETOOLONG, -ENOMEM; *ret_key malloc'ed. */
int cfs_redirect_normalize(const char *redirect, size_t len, char **ret_key);
/* Open @path (normalized) below @dirfd, never leaving it: openat2()
 * RESOLVE_BENEATH, or an O_NOFOLLOW walk where the kernel has no openat2
 * (*@have_openat2 is cleared then).  A symlink, a non-directory on the way
 * or a path leaving @dirfd gives -EPERM. */
int cfs_open_beneath(int dirfd, const char *path, bool *have_openat2);

/* Open a path below basedir @i, never leaving it (openat2 RESOLVE_BENEATH,
 * or an O_NOFOLLOW walk). */
int cfs_cas_open_beneath(struct cfs_cas *cas, size_t i, const char *path);
/* Close the least recently used idle objects (their trees go to the tree
 * LRU) until at most @keep are left.  Caller holds cas->lock. */
void cfs_cas_trim_idle(struct cfs_cas *cas, size_t keep);
