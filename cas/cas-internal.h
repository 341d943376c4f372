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

#include "cas.h"

#define CFS_BLOCK_SHIFT 12
#define CFS_HASHES_PER_BLOCK (CFS_VERITY_BLOCK_SIZE / CFS_DIGEST_SIZE) /* 128 */
#define CFS_MERKLE_MAX_LEVELS 8 /* 128^8 blocks of 4 KiB is far beyond 2^64 bytes */
/* Trees are kept in memory: refuse (-EFBIG) objects whose tree would exceed
 * this, i.e. objects over 512 GiB, rather than exhaust memory. */
#define CFS_MERKLE_MAX_TREE_BYTES (4ULL << 30)

/* SHA-256 of @len bytes with a per-thread OpenSSL context (no locks). */
void cfs_sha256(const void *data, size_t len, uint8_t out[CFS_DIGEST_SIZE]);

/*
 * An fs-verity Merkle tree (SHA-256, 4096-byte blocks, no salt), laid out as
 * FS_IOC_READ_VERITY_METADATA returns it: the root level first, the leaf
 * level (hashes of data blocks) last, each level padded to whole blocks.
 * Level 0 is the leaf level in the arrays below.  A file of at most one
 * block has no tree: its root hash is the hash of its (zero-padded) block.
 *
 * The tree bytes are immutable once built; @verified has one bit per tree
 * block, set (atomically) once that block is known to chain up to the root
 * hash.  A tree is owned by exactly one open object or by the LRU.
 */
struct cfs_merkle {
	uint64_t data_size;
	uint64_t data_blocks;
	unsigned levels;
	uint64_t level_start[CFS_MERKLE_MAX_LEVELS];  /* first block of level L in @tree */
	uint64_t level_blocks[CFS_MERKLE_MAX_LEVELS];
	uint64_t tree_blocks;
	uint8_t *tree;                  /* tree_blocks * 4096 bytes */
	_Atomic uint64_t *verified;     /* bitmap over tree blocks */
	uint8_t root_hash[CFS_DIGEST_SIZE];
	uint8_t digest[CFS_DIGEST_SIZE];

	/* tree cache linkage, under the cas lock */
	struct cfs_merkle *lru_prev, *lru_next, *hash_next;
};

/* Compute the level geometry for @data_size into @t (no allocation).
 * -EFBIG if the tree would not fit the address space. */
int cfs_merkle_geometry(uint64_t data_size, struct cfs_merkle *t);
/* Allocate the tree and bitmap for the geometry already in @t. */
int cfs_merkle_alloc(struct cfs_merkle *t);
struct cfs_merkle *cfs_merkle_free(struct cfs_merkle *t);
CFS_DEFINE_CLEANUP(struct cfs_merkle *, cfs_merkle_free)
static inline uint64_t cfs_merkle_bytes(const struct cfs_merkle *t)
{
	return t->tree_blocks * CFS_VERITY_BLOCK_SIZE + (t->tree_blocks + 63) / 64 * 8 + sizeof(*t);
}
static inline const uint8_t *cfs_merkle_block(const struct cfs_merkle *t, uint64_t idx)
{
	return t->tree + idx * CFS_VERITY_BLOCK_SIZE;
}

/* The fs-verity file digest for @data_size and @root_hash. */
void cfs_merkle_file_digest(uint64_t data_size, const uint8_t root_hash[CFS_DIGEST_SIZE],
			    uint8_t ret_digest[CFS_DIGEST_SIZE]);

/* Mark every tree block verified (the whole tree was just checked). */
void cfs_merkle_mark_all_verified(struct cfs_merkle *t);

/*
 * Check a data block whose SHA-256 is @hash: compare it with its leaf
 * entry, then walk up from the leaf's tree block until a block already
 * verified (or the root hash) is reached, marking the blocks it proved.
 * Returns 0 or -EIO.  Lock-free.
 */
int cfs_merkle_verify_hash(struct cfs_merkle *t, uint64_t blk, const uint8_t hash[CFS_DIGEST_SIZE]);

struct cfs_io;

/*
 * Build the tree of the @size bytes readable from @fd with libfsverity (its
 * metadata callbacks hand out the tree blocks), reading ahead through @io.
 * The digest must equal @expected, else -EIO (@expected NULL: no check, for
 * tools that compute digests).  A file that is shorter or longer than @size
 * is -EIO too.
 */
int cfs_merkle_build_fd(struct cfs_io *io, int fd, uint64_t size,
			const uint8_t expected[CFS_DIGEST_SIZE], struct cfs_merkle **ret_tree);

/*
 * Rebuild a tree from an untrusted copy of its leaf level: recompute all
 * upper levels, the root hash and the file digest, which must equal
 * @expected (else -EBADMSG).  On success every block is marked verified.
 */
int cfs_merkle_from_leaves(uint64_t size, const void *leaves, size_t leaves_len,
			   const uint8_t expected[CFS_DIGEST_SIZE], struct cfs_merkle **ret_tree);

/* Bytes of the leaf level of @t (0 for a file of at most one block). */
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
/* Exactly @count bytes, in order; -EIO if the file ends early. */
int cfs_seqreader_read(struct cfs_seqreader *r, void *buf, size_t count);
/* 0 if the file ends exactly at the size given, -EIO if it goes on. */
int cfs_seqreader_check_eof(struct cfs_seqreader *r);
struct cfs_seqreader *cfs_seqreader_free(struct cfs_seqreader *r);
CFS_DEFINE_CLEANUP(struct cfs_seqreader *, cfs_seqreader_free)

/* ---- tree cache ---- */

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

/* ---- objects ---- */

enum cfs_object_state {
	CFS_OBJ_INIT,
	CFS_OBJ_READY,
	CFS_OBJ_FAILED,
};

struct cfs_object {
	atomic_uint refcount;
	struct cfs_cas *cas;
	struct cfs_object *hash_next; /* under cas->lock */
	uint64_t hash;
	char *key;                    /* relative path in the store */
	bool has_digest;
	uint8_t digest[CFS_DIGEST_SIZE];

	enum cfs_object_state state;  /* under cas->lock; INIT until set up */
	int init_error;

	/* Written by the opener while INIT, immutable once READY (published
	 * to other threads through cas->lock): */
	int fd;
	uint64_t size;
	enum cfs_verify_method method;
	struct cfs_merkle *tree;      /* USERSPACE only */
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

	pthread_mutex_t lock;         /* objects table, object states, tree cache */
	pthread_cond_t init_cond;     /* an object left the INIT state */
	struct cfs_object **buckets;
	size_t nbuckets, nobjects;
	struct cfs_tree_cache trees;

	struct {
		_Atomic uint64_t objects_opened, trees_built, trees_from_memory, trees_from_disk,
			trees_rejected, trees_written, tree_write_errors, blocks_failed;
	} stats;
};

/* Choose and set up the verification method of a freshly opened object. */
int cfs_object_setup_method(struct cfs_cas *cas, struct cfs_object *obj);
