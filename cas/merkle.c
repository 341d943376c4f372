/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * fs-verity Merkle trees in userspace: geometry, building with libfsverity,
 * rebuilding from an untrusted leaf level, and the per-block check used on
 * every read.  The construction is the kernel's (Documentation/filesystems/
 * fsverity.rst): SHA-256 over 4096-byte blocks, no salt, the last data block
 * and the last block of each level zero-padded, levels stored root first.
 */
#include <assert.h>
#include <endian.h>
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include <libfsverity.h>
#include <linux/fsverity.h>
#include <openssl/evp.h>
#include <openssl/sha.h>

#include "cas-internal.h"

static_assert(sizeof(struct fsverity_descriptor) == 256, "fs-verity descriptor layout");

/*
 * Hashing: a pre-fetched EVP_MD and one EVP_MD_CTX per thread.  This is
 * measurably faster than SHA256() (which fetches the algorithm on every
 * call, taking a lock in the provider store) and takes no lock at all;
 * OpenSSL picks the SHA-NI code path on CPUs that have it.
 */
static pthread_once_t sha_once = PTHREAD_ONCE_INIT;
static EVP_MD *sha_md;
static pthread_key_t sha_key;
static bool sha_key_ok;
static __thread EVP_MD_CTX *sha_ctx;

static void sha_ctx_free(void *p)
{
	EVP_MD_CTX_free(p);
}

static void sha_init_once(void)
{
	sha_md = EVP_MD_fetch(NULL, "SHA256", NULL);
	sha_key_ok = pthread_key_create(&sha_key, sha_ctx_free) == 0;
}

void cfs_sha256(const void *data, size_t len, uint8_t out[CFS_DIGEST_SIZE])
{
	EVP_MD_CTX *c = sha_ctx;
	unsigned int outlen = 0;

	if (_unlikely_(!c)) {
		pthread_once(&sha_once, sha_init_once);
		if (sha_md && sha_key_ok) {
			c = EVP_MD_CTX_new();
			if (c && pthread_setspecific(sha_key, c) != 0) {
				EVP_MD_CTX_free(c);
				c = NULL;
			}
			sha_ctx = c;
		}
	}
	if (_likely_(c) && EVP_DigestInit_ex2(c, sha_md, NULL) == 1 &&
	    EVP_DigestUpdate(c, data, len) == 1 && EVP_DigestFinal_ex(c, out, &outlen) == 1 &&
	    outlen == CFS_DIGEST_SIZE)
		return;
	/* No context (out of memory): the one-shot call still gives the right hash. */
	SHA256(data, len, out);
}

int cfs_merkle_geometry(uint64_t data_size, struct cfs_merkle *t)
{
	uint64_t n, off = 0;
	unsigned levels = 0;

	t->data_size = data_size;
	t->data_blocks = data_size == 0 ? 0 : (data_size - 1) / CFS_VERITY_BLOCK_SIZE + 1;
	for (n = t->data_blocks; n > 1;) {
		if (levels == CFS_MERKLE_MAX_LEVELS)
			return -EFBIG;
		n = (n + CFS_HASHES_PER_BLOCK - 1) / CFS_HASHES_PER_BLOCK;
		t->level_blocks[levels++] = n;
	}
	t->levels = levels;
	for (unsigned l = levels; l-- > 0;) {
		t->level_start[l] = off;
		off += t->level_blocks[l];
	}
	t->tree_blocks = off;
	if (off > CFS_MERKLE_MAX_TREE_BYTES / CFS_VERITY_BLOCK_SIZE ||
	    off > (SIZE_MAX / 2) / CFS_VERITY_BLOCK_SIZE)
		return -EFBIG;
	return 0;
}

int cfs_merkle_alloc(struct cfs_merkle *t)
{
	size_t bytes = t->tree_blocks * CFS_VERITY_BLOCK_SIZE;

	t->tree = NULL;
	t->verified = NULL;
	if (bytes > 0) {
		if (posix_memalign((void **)&t->tree, 64, bytes) != 0)
			return -ENOMEM;
		memset(t->tree, 0, bytes);
	}
	t->verified = calloc((t->tree_blocks + 63) / 64 + 1, sizeof(uint64_t));
	if (!t->verified) {
		free(t->tree);
		t->tree = NULL;
		return -ENOMEM;
	}
	return 0;
}

struct cfs_merkle *cfs_merkle_free(struct cfs_merkle *t)
{
	if (t) {
		free(t->tree);
		free((void *)t->verified);
		free(t);
	}
	return NULL;
}

static int merkle_new(uint64_t size, struct cfs_merkle **ret_tree)
{
	_cleanup_(cfs_merkle_freep) struct cfs_merkle *t = calloc(1, sizeof(*t));
	int r;

	if (!t)
		return -ENOMEM;
	r = cfs_merkle_geometry(size, t);
	if (r < 0)
		return r;
	r = cfs_merkle_alloc(t); /* leaves nothing allocated when it fails */
	if (r < 0)
		return r;
	*ret_tree = steal_ptr(&t);
	return 0;
}

uint64_t cfs_merkle_leaf_bytes(const struct cfs_merkle *t)
{
	return t->levels ? t->level_blocks[0] * CFS_VERITY_BLOCK_SIZE : 0;
}

void cfs_merkle_file_digest(uint64_t data_size, const uint8_t root_hash[CFS_DIGEST_SIZE],
			    uint8_t ret_digest[CFS_DIGEST_SIZE])
{
	struct fsverity_descriptor d;

	memset(&d, 0, sizeof(d));
	d.version = 1;
	d.hash_algorithm = FS_VERITY_HASH_ALG_SHA256;
	d.log_blocksize = CFS_BLOCK_SHIFT;
	d.data_size = htole64(data_size);
	memcpy(d.root_hash, root_hash, CFS_DIGEST_SIZE);
	cfs_sha256(&d, sizeof(d), ret_digest);
}

void cfs_merkle_mark_all_verified(struct cfs_merkle *t)
{
	for (uint64_t i = 0; i < t->tree_blocks / 64; i++)
		atomic_store_explicit(&t->verified[i], UINT64_MAX, memory_order_release);
	if (t->tree_blocks % 64)
		atomic_store_explicit(&t->verified[t->tree_blocks / 64],
				      (UINT64_C(1) << (t->tree_blocks % 64)) - 1, memory_order_release);
}

static inline bool block_verified(const struct cfs_merkle *t, uint64_t b)
{
	return atomic_load_explicit(&t->verified[b / 64], memory_order_acquire) & (UINT64_C(1) << (b % 64));
}

/* Where the hash of block @idx of level @level is stored: in level + 1, or
 * the root hash for the top level. */
static const uint8_t *parent_entry(const struct cfs_merkle *t, unsigned level, uint64_t idx)
{
	if (level + 1 == t->levels)
		return t->root_hash;
	return cfs_merkle_block(t, t->level_start[level + 1] + idx / CFS_HASHES_PER_BLOCK) +
	       (idx % CFS_HASHES_PER_BLOCK) * CFS_DIGEST_SIZE;
}

int cfs_merkle_verify_hash(struct cfs_merkle *t, uint64_t blk, const uint8_t hash[CFS_DIGEST_SIZE])
{
	uint64_t chain_idx[CFS_MERKLE_MAX_LEVELS];
	unsigned n = 0, level;
	uint64_t idx;

	if (_unlikely_(blk >= t->data_blocks))
		return -EIO;
	if (t->levels == 0)
		return memcmp(hash, t->root_hash, CFS_DIGEST_SIZE) == 0 ? 0 : -EIO;

	idx = blk / CFS_HASHES_PER_BLOCK;
	if (memcmp(hash, cfs_merkle_block(t, t->level_start[0] + idx) +
				 (blk % CFS_HASHES_PER_BLOCK) * CFS_DIGEST_SIZE,
		   CFS_DIGEST_SIZE) != 0)
		return -EIO;

	/* Warm path: the leaf's tree block was verified before. */
	if (_likely_(block_verified(t, t->level_start[0] + idx)))
		return 0;

	/* Collect the unverified blocks from the leaf block up. */
	for (level = 0; level < t->levels; level++, idx /= CFS_HASHES_PER_BLOCK) {
		if (block_verified(t, t->level_start[level] + idx))
			break;
		chain_idx[n++] = idx;
	}
	/* Each must hash to its entry in the parent, which is either in the
	 * chain (checked in this loop) or already verified, or the root. */
	for (unsigned i = 0; i < n; i++) {
		uint8_t h[CFS_DIGEST_SIZE];

		cfs_sha256(cfs_merkle_block(t, t->level_start[i] + chain_idx[i]), CFS_VERITY_BLOCK_SIZE, h);
		if (memcmp(h, parent_entry(t, i, chain_idx[i]), CFS_DIGEST_SIZE) != 0)
			return -EIO;
	}
	for (unsigned i = 0; i < n; i++) {
		uint64_t b = t->level_start[i] + chain_idx[i];

		atomic_fetch_or_explicit(&t->verified[b / 64], UINT64_C(1) << (b % 64), memory_order_release);
	}
	return 0;
}

/* ---- building with libfsverity ---- */

struct build_ctx {
	struct cfs_merkle *t;
	struct cfs_seqreader *reader;
	bool have_root;
};

static int build_read(void *fd, void *buf, size_t count)
{
	struct build_ctx *c = fd;

	return cfs_seqreader_read(c->reader, buf, count);
}

static int cb_tree_size(void *ctx, uint64_t size)
{
	struct build_ctx *c = ctx;

	/* Our geometry must agree with libfsverity's, or the offsets below
	 * would mean something else. */
	return size == c->t->tree_blocks * CFS_VERITY_BLOCK_SIZE ? 0 : -EINVAL;
}

static int cb_tree_block(void *ctx, const void *block, size_t size, uint64_t offset)
{
	struct build_ctx *c = ctx;

	if (size > CFS_VERITY_BLOCK_SIZE || offset % CFS_VERITY_BLOCK_SIZE ||
	    !cfs_range_ok(offset, size, c->t->tree_blocks * CFS_VERITY_BLOCK_SIZE))
		return -EINVAL;
	memcpy(c->t->tree + offset, block, size);
	return 0;
}

static int cb_descriptor(void *ctx, const void *descriptor, size_t size)
{
	struct build_ctx *c = ctx;
	const struct fsverity_descriptor *d = descriptor;

	if (size < sizeof(*d) || d->hash_algorithm != FS_VERITY_HASH_ALG_SHA256 ||
	    le64toh(d->data_size) != c->t->data_size)
		return -EINVAL;
	memcpy(c->t->root_hash, d->root_hash, CFS_DIGEST_SIZE);
	c->have_root = true;
	return 0;
}

int cfs_merkle_build_fd(struct cfs_io *io, int fd, uint64_t size,
			const uint8_t expected[CFS_DIGEST_SIZE], struct cfs_merkle **ret_tree)
{
	_cleanup_(cfs_merkle_freep) struct cfs_merkle *t = NULL;
	_cleanup_(cfs_seqreader_freep) struct cfs_seqreader *reader = NULL;
	struct libfsverity_digest *d = NULL;
	struct build_ctx c;
	const struct libfsverity_metadata_callbacks cbs = {
		.ctx = &c,
		.merkle_tree_size = cb_tree_size,
		.merkle_tree_block = cb_tree_block,
		.descriptor = cb_descriptor,
	};
	const struct libfsverity_merkle_tree_params params = {
		.version = 1,
		.hash_algorithm = FS_VERITY_HASH_ALG_SHA256,
		.file_size = size,
		.block_size = CFS_VERITY_BLOCK_SIZE,
		.metadata_callbacks = &cbs,
	};
	int r;

	r = merkle_new(size, &t);
	if (r < 0)
		return r;
	r = cfs_seqreader_new(io, fd, size, &reader);
	if (r < 0)
		return r;
	c = (struct build_ctx){ .t = t, .reader = reader };

	r = libfsverity_compute_digest(&c, build_read, &params, &d);
	if (r < 0)
		return r;
	if (d->digest_algorithm != FS_VERITY_HASH_ALG_SHA256 || d->digest_size != CFS_DIGEST_SIZE ||
	    !c.have_root) {
		free(d);
		return -EINVAL;
	}
	memcpy(t->digest, d->digest, CFS_DIGEST_SIZE);
	free(d);

	/* A file that grew since it was measured is not the object. */
	r = cfs_seqreader_check_eof(reader);
	if (r < 0)
		return r;
	if (expected && memcmp(t->digest, expected, CFS_DIGEST_SIZE) != 0)
		return -EIO;
	if (t->levels > 0) {
		uint8_t h[CFS_DIGEST_SIZE];

		/* The top block must hash to the root libfsverity reported:
		 * proves the blocks landed where our geometry expects them. */
		cfs_sha256(cfs_merkle_block(t, t->level_start[t->levels - 1]), CFS_VERITY_BLOCK_SIZE, h);
		if (memcmp(h, t->root_hash, CFS_DIGEST_SIZE) != 0)
			return -EIO;
	}
	/* Every block was computed here from the data just hashed. */
	cfs_merkle_mark_all_verified(t);
	*ret_tree = steal_ptr(&t);
	return 0;
}

int cfs_merkle_from_leaves(uint64_t size, const void *leaves, size_t leaves_len,
			   const uint8_t expected[CFS_DIGEST_SIZE], struct cfs_merkle **ret_tree)
{
	_cleanup_(cfs_merkle_freep) struct cfs_merkle *t = NULL;
	int r;

	r = merkle_new(size, &t);
	if (r < 0)
		return r;
	if (t->levels == 0 || leaves_len != cfs_merkle_leaf_bytes(t))
		return -EBADMSG;
	memcpy(t->tree + t->level_start[0] * CFS_VERITY_BLOCK_SIZE, leaves, leaves_len);

	for (unsigned l = 1; l < t->levels; l++) {
		for (uint64_t j = 0; j < t->level_blocks[l - 1]; j++) {
			uint8_t *dst = t->tree + (t->level_start[l] + j / CFS_HASHES_PER_BLOCK) *
							 CFS_VERITY_BLOCK_SIZE +
				       (j % CFS_HASHES_PER_BLOCK) * CFS_DIGEST_SIZE;

			cfs_sha256(cfs_merkle_block(t, t->level_start[l - 1] + j), CFS_VERITY_BLOCK_SIZE, dst);
		}
	}
	cfs_sha256(cfs_merkle_block(t, t->level_start[t->levels - 1]), CFS_VERITY_BLOCK_SIZE, t->root_hash);
	cfs_merkle_file_digest(size, t->root_hash, t->digest);
	if (memcmp(t->digest, expected, CFS_DIGEST_SIZE) != 0)
		return -EBADMSG;
	cfs_merkle_mark_all_verified(t);
	*ret_tree = steal_ptr(&t);
	return 0;
}
