/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* fs-verity digests of whole files and buffers, computed by libfsverity. */
#include <errno.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <libfsverity.h>

#include "cas-internal.h"

struct mem_reader {
	const uint8_t *data;
	size_t size, pos;
};

static int read_mem(void *fd, void *buf, size_t count)
{
	struct mem_reader *r = fd;

	if (count > r->size - r->pos)
		return -EIO;
	memcpy(buf, r->data + r->pos, count);
	r->pos += count;
	return 0;
}

/* Whole-file reads go through the engine's sequential reader: large
 * pread()s (libfsverity asks for one 4 KiB block at a time, which as
 * read() calls costs a syscall per block). */
static int read_seq(void *fd, void *buf, size_t count)
{
	return cfs_seqreader_read(fd, buf, count);
}

static int compute(void *ctx, libfsverity_read_fn_t fn, uint64_t size,
		   uint8_t ret_digest[CFS_DIGEST_SIZE])
{
	struct libfsverity_merkle_tree_params params = {
		.version = 1,
		.hash_algorithm = FS_VERITY_HASH_ALG_SHA256,
		.file_size = size,
		.block_size = CFS_VERITY_BLOCK_SIZE,
	};
	struct libfsverity_digest *d = NULL;
	int r;

	r = libfsverity_compute_digest(ctx, fn, &params, &d);
	if (r < 0)
		return r;
	if (d->digest_size != CFS_DIGEST_SIZE) {
		free(d);
		return -EINVAL;
	}
	memcpy(ret_digest, d->digest, CFS_DIGEST_SIZE);
	free(d);
	return 0;
}

int cfs_fsverity_digest_mem(const void *data, size_t size, uint8_t ret_digest[CFS_DIGEST_SIZE])
{
	struct mem_reader r = { .data = data, .size = size };

	return compute(&r, read_mem, size, ret_digest);
}

int cfs_fsverity_digest_fd(int fd, uint8_t ret_digest[CFS_DIGEST_SIZE])
{
	_cleanup_(cfs_seqreader_freep) struct cfs_seqreader *reader = NULL;
	struct cfs_io io;
	struct stat st;
	int r;

	if (fstat(fd, &st) < 0)
		return -errno;
	if (!S_ISREG(st.st_mode))
		return -EINVAL;
	/* pread backend: no io_uring ring per call for many small files
	 * (mkcomposefs); the reader uses pread, so the file offset is unused. */
	r = cfs_io_init(&io, CFS_IO_PREAD);
	if (r < 0)
		return r;
	r = cfs_seqreader_new(&io, fd, (uint64_t)st.st_size, &reader);
	if (r == 0)
		r = compute(reader, read_seq, (uint64_t)st.st_size, ret_digest);
	reader = cfs_seqreader_free(reader);
	cfs_io_fini(&io);
	return r;
}
