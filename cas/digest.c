/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* fs-verity digests of whole files and buffers, computed by libfsverity. */
#include <errno.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <libfsverity.h>

#include "cas.h"

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

static int read_fd(void *fd, void *buf, size_t count)
{
	int f = *(int *)fd;
	uint8_t *p = buf;

	while (count > 0) {
		ssize_t n = read(f, p, count);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		if (n == 0)
			return -EIO; /* the file shrank under us */
		p += n;
		count -= (size_t)n;
	}
	return 0;
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
	struct stat st;

	if (fstat(fd, &st) < 0)
		return -errno;
	if (!S_ISREG(st.st_mode))
		return -EINVAL;
	if (lseek(fd, 0, SEEK_SET) < 0)
		return -errno;
	return compute(&fd, read_fd, (uint64_t)st.st_size, ret_digest);
}
