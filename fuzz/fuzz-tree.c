/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * libFuzzer target: the input is a stored Merkle tree file (as found in
 * BASEDIR/.cfs-trees or the tree cache: header and leaf level), read as the
 * tree of an object whose size is taken from its own header (so that the
 * leaf-level checks are reached) and whose digest is that header's.  It
 * must be refused unless its leaves really hash to that digest; crashing,
 * leaking or reading out of bounds is not allowed, nor is accepting a tree
 * whose leaves do not give the digest.
 */
#include <endian.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "cas-internal.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct cfs_merkle *t = NULL;
	uint64_t obj_size = 0;
	uint8_t digest[CFS_DIGEST_SIZE] = { 0 };
	int fd, r;

	if (size >= 64) {
		memcpy(&obj_size, data + 16, 8);
		obj_size = le64toh(obj_size);
		memcpy(digest, data + 32, CFS_DIGEST_SIZE);
	}
	fd = memfd_create("tree", MFD_CLOEXEC);
	if (fd < 0)
		return 0;
	if (size && write(fd, data, size) != (ssize_t)size) {
		close(fd);
		return 0;
	}
	r = cfs_tree_file_read(fd, obj_size, digest, &t);
	close(fd);
	if (r == 0) {
		uint8_t check[CFS_DIGEST_SIZE];

		/* Accepted: its leaves must give the digest. */
		if (!t || t->data_size != obj_size || memcmp(t->digest, digest, CFS_DIGEST_SIZE) != 0)
			abort();
		cfs_merkle_file_digest(t->data_size, t->root_hash, check);
		if (memcmp(check, digest, CFS_DIGEST_SIZE) != 0)
			abort();
	}
	cfs_merkle_free(t);
	return 0;
}
