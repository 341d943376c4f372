/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * fs-verity digests of whole files and buffers, with the engine's own
 * single-pass tree builder (merkle.c; the tests check it against Debian's
 * fsverity tool, which uses libfsverity).
 */
#include <errno.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cas-internal.h"

int cfs_fsverity_digest_mem(const void *data, size_t size, uint8_t ret_digest[CFS_DIGEST_SIZE])
{
	_cleanup_(cfs_merkle_freep) struct cfs_merkle *t = NULL;
	int r = cfs_merkle_from_mem(data, size, &t);

	if (r < 0)
		return r;
	memcpy(ret_digest, t->digest, CFS_DIGEST_SIZE);
	return 0;
}

int cfs_fsverity_digest_fd(int fd, uint8_t ret_digest[CFS_DIGEST_SIZE])
{
	_cleanup_(cfs_merkle_freep) struct cfs_merkle *t = NULL;
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
	r = cfs_merkle_build_fd(&io, fd, (uint64_t)st.st_size, NULL, NULL, &t);
	cfs_io_fini(&io);
	if (r == -EBADMSG)
		r = -EIO; /* the file changed size while it was read */
	if (r < 0)
		return r;
	memcpy(ret_digest, t->digest, CFS_DIGEST_SIZE);
	return 0;
}
