/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * fs-verity Merkle trees in userspace: building one from an object's data,
 * rebuilding one from an untrusted copy of its leaf level, and the check of
 * one data block used on every read.  The construction is the kernel's
 * (Documentation/filesystems/fsverity.rst): SHA-256 over 4096-byte blocks,
 * no salt, the last data block and the last block of each level zero-padded.
 *
 * Only the leaf level is kept in memory: a tree is checked from its leaves
 * up to the file digest once, when it is built or loaded, and from then on
 * its leaves are trusted daemon memory, so a block is checked by comparing
 * its hash with one leaf and nothing else is ever read again.  A tree costs
 * 32 bytes per data block (1/128 of the data) plus this struct; an object of
 * one block keeps its only hash, the root hash, in the struct itself.
 */
#include <assert.h>
#include <endian.h>
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include <linux/fsverity.h>
#include <openssl/evp.h>
#include <openssl/sha.h>

#include "cas-internal.h"

#define BS CFS_VERITY_BLOCK_SIZE
#define BUILD_CHUNK (256 * 1024) /* bytes hashed per step of a streaming build */
#define PARALLEL_HASH_MIN (4U << 20)

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

void cfs_sha256_block(const void *data, size_t len, uint8_t out[CFS_DIGEST_SIZE])
{
	if (len < BS) {
		_Alignas(64) uint8_t blk[BS];

		memcpy(blk, data, len);
		memset(blk + len, 0, BS - len);
		cfs_sha256(blk, BS, out);
		return;
	}
	cfs_sha256(data, BS, out);
}

int cfs_merkle_new(uint64_t data_size, struct cfs_merkle **ret_tree)
{
	_cleanup_(cfs_merkle_freep) struct cfs_merkle *t = calloc(1, sizeof(*t));
	uint64_t blocks = data_size == 0 ? 0 : (data_size - 1) / BS + 1;

	if (!t)
		return -ENOMEM;
	if (blocks > CFS_MERKLE_MAX_LEAF_BYTES / CFS_DIGEST_SIZE)
		return -EFBIG;
	t->data_size = data_size;
	t->data_blocks = blocks;
	if (blocks > 1) {
		t->leaves = malloc(blocks * CFS_DIGEST_SIZE);
		if (!t->leaves)
			return -ENOMEM;
	}
	*ret_tree = steal_ptr(&t);
	return 0;
}

struct cfs_merkle *cfs_merkle_free(struct cfs_merkle *t)
{
	if (t) {
		free(t->leaves);
		free(t);
	}
	return NULL;
}

uint64_t cfs_merkle_leaf_bytes(const struct cfs_merkle *t)
{
	if (t->data_blocks <= 1)
		return 0;
	return (t->data_blocks + CFS_HASHES_PER_BLOCK - 1) / CFS_HASHES_PER_BLOCK * BS;
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

/*
 * Hash @n entries of one level into ceil(n / 128) entries of the next, in
 * place when @out == @in: output entry j is written after input entries
 * 128j.. were hashed, and j <= 128j.
 */
static uint64_t hash_level(const uint8_t *in, uint64_t n, uint8_t *out)
{
	uint64_t groups = (n + CFS_HASHES_PER_BLOCK - 1) / CFS_HASHES_PER_BLOCK;

	for (uint64_t j = 0; j < groups; j++) {
		uint64_t first = j * CFS_HASHES_PER_BLOCK;
		uint64_t cnt = n - first < CFS_HASHES_PER_BLOCK ? n - first : CFS_HASHES_PER_BLOCK;
		uint8_t h[CFS_DIGEST_SIZE];

		cfs_sha256_block(in + first * CFS_DIGEST_SIZE, cnt * CFS_DIGEST_SIZE, h);
		memcpy(out + j * CFS_DIGEST_SIZE, h, CFS_DIGEST_SIZE);
	}
	return groups;
}

/* Root hash and file digest of @t from its leaves (or its one block hash,
 * already in root_hash). */
static int finish_tree(struct cfs_merkle *t)
{
	if (t->data_blocks == 0)
		memset(t->root_hash, 0, CFS_DIGEST_SIZE); /* fs-verity's empty file */
	if (t->data_blocks > 1) {
		uint64_t n = t->data_blocks;
		_cleanup_free_ uint8_t *level = malloc(((n + CFS_HASHES_PER_BLOCK - 1) / CFS_HASHES_PER_BLOCK) *
						       CFS_DIGEST_SIZE);

		if (!level)
			return -ENOMEM;
		n = hash_level(t->leaves, n, level);
		while (n > 1)
			n = hash_level(level, n, level);
		memcpy(t->root_hash, level, CFS_DIGEST_SIZE);
	}
	cfs_merkle_file_digest(t->data_size, t->root_hash, t->digest);
	return 0;
}

/* Where the hash of data block @blk is kept. */
static inline uint8_t *leaf(struct cfs_merkle *t, uint64_t blk)
{
	return t->data_blocks == 1 ? t->root_hash : t->leaves + blk * CFS_DIGEST_SIZE;
}

int cfs_merkle_verify_hash(const struct cfs_merkle *t, uint64_t blk, const uint8_t hash[CFS_DIGEST_SIZE])
{
	if (_unlikely_(blk >= t->data_blocks))
		return -EIO;
	return memcmp(hash, leaf((struct cfs_merkle *)t, blk), CFS_DIGEST_SIZE) == 0 ? 0 : -EIO;
}

/* Hash the data blocks in @data (@len bytes, a whole number of blocks
 * unless it ends the file) as leaves from block @first on. */
static void hash_data(struct cfs_merkle *t, uint64_t first, const uint8_t *data, size_t len)
{
	for (size_t o = 0; o < len; o += BS)
		cfs_sha256_block(data + o, len - o < BS ? len - o : BS, leaf(t, first + o / BS));
}

int cfs_merkle_build_fd(struct cfs_io *io, int fd, uint64_t size, const uint8_t expected[CFS_DIGEST_SIZE],
			void **ret_data, struct cfs_merkle **ret_tree)
{
	_cleanup_(cfs_merkle_freep) struct cfs_merkle *t = NULL;
	_cleanup_(cfs_seqreader_freep) struct cfs_seqreader *reader = NULL;
	_cleanup_free_ uint8_t *buf = NULL;
	bool keep = ret_data != NULL;
	int r;

	r = cfs_merkle_new(size, &t);
	if (r < 0)
		return r;
	/* Kept whole: the caller gets the verified copy.  Else one chunk at
	 * a time. */
	if (keep && size > SIZE_MAX - BS)
		return -EFBIG;
	buf = malloc(keep ? (size ? (size_t)size : 1) : BUILD_CHUNK);
	if (!buf)
		return -ENOMEM;
	r = cfs_seqreader_new(io, fd, size, &reader);
	if (r < 0)
		return r;
	for (uint64_t off = 0; off < size;) {
		size_t n = size - off < BUILD_CHUNK ? (size_t)(size - off) : BUILD_CHUNK;
		uint8_t *p = keep ? buf + off : buf;

		r = cfs_seqreader_read(reader, p, n);
		if (r < 0)
			return r;
		hash_data(t, off / BS, p, n);
		off += n;
	}
	/* A file that grew since it was measured is not the object. */
	r = cfs_seqreader_check_eof(reader);
	if (r < 0)
		return r;
	r = finish_tree(t);
	if (r < 0)
		return r;
	if (expected && memcmp(t->digest, expected, CFS_DIGEST_SIZE) != 0)
		return -EBADMSG;
	if (keep)
		*ret_data = steal_ptr(&buf);
	*ret_tree = steal_ptr(&t);
	return 0;
}

struct hash_part {
	struct cfs_merkle *t;
	uint64_t first;
	const uint8_t *data;
	size_t len;
};

static void *hash_part_thread(void *p)
{
	struct hash_part *h = p;

	hash_data(h->t, h->first, h->data, h->len);
	return NULL;
}

int cfs_merkle_from_mem(const void *data, uint64_t size, struct cfs_merkle **ret_tree)
{
	_cleanup_(cfs_merkle_freep) struct cfs_merkle *t = NULL;
	struct hash_part second;
	pthread_t th;
	size_t half;
	int r;

	r = cfs_merkle_new(size, &t);
	if (r < 0)
		return r;
	/* A large buffer (an image checked at mount) is hashed by two
	 * threads, each on its own half of the leaves. */
	half = (size_t)(size / 2 / BS * BS);
	second = (struct hash_part){ .t = t, .first = half / BS, .data = (const uint8_t *)data + half,
				     .len = (size_t)size - half };
	if (size >= PARALLEL_HASH_MIN && pthread_create(&th, NULL, hash_part_thread, &second) == 0) {
		hash_data(t, 0, data, half);
		pthread_join(th, NULL);
	} else {
		hash_data(t, 0, data, (size_t)size);
	}
	r = finish_tree(t);
	if (r < 0)
		return r;
	*ret_tree = steal_ptr(&t);
	return 0;
}

int cfs_merkle_from_leaves(uint64_t size, const void *leaves, size_t leaves_len,
			   const uint8_t expected[CFS_DIGEST_SIZE], struct cfs_merkle **ret_tree)
{
	_cleanup_(cfs_merkle_freep) struct cfs_merkle *t = NULL;
	int r;

	r = cfs_merkle_new(size, &t);
	if (r < 0)
		return r;
	if (t->data_blocks <= 1 || leaves_len != cfs_merkle_leaf_bytes(t))
		return -EBADMSG;
	/* The padding must be the construction's zeros: nothing in a stored
	 * tree goes unchecked. */
	for (size_t i = t->data_blocks * CFS_DIGEST_SIZE; i < leaves_len; i++)
		if (((const uint8_t *)leaves)[i] != 0)
			return -EBADMSG;
	memcpy(t->leaves, leaves, t->data_blocks * CFS_DIGEST_SIZE);
	r = finish_tree(t);
	if (r < 0)
		return r;
	if (memcmp(t->digest, expected, CFS_DIGEST_SIZE) != 0)
		return -EBADMSG;
	*ret_tree = steal_ptr(&t);
	return 0;
}
