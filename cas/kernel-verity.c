/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* The real kernel fs-verity interface (linux/fsverity.h ioctls). */
#include <errno.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/vfs.h>

#include <linux/fsverity.h>
#include <linux/magic.h>

#include "cas-internal.h"

static int kernel_measure(void *userdata, int fd, uint8_t ret_digest[CFS_DIGEST_SIZE])
{
	union {
		struct fsverity_digest d;
		uint8_t space[sizeof(struct fsverity_digest) + 64];
	} u;
	struct statfs sfs;

	/* FUSE hands FS_IOC_MEASURE_VERITY to its server (Linux 6.4+), which
	 * can answer the digest we want while serving other data: only a
	 * filesystem whose kernel checks every read may replace our check. */
	if (fstatfs(fd, &sfs) < 0)
		return -errno;
	if (sfs.f_type == FUSE_SUPER_MAGIC)
		return -EOPNOTSUPP;
	memset(&u, 0, sizeof(u));
	u.d.digest_size = 64; /* room we offer; the kernel writes the real size */
	if (ioctl(fd, FS_IOC_MEASURE_VERITY, &u.d) < 0)
		return -errno;
	/* A file with verity in another algorithm cannot be compared with a
	 * SHA-256 digest: treat as "no usable kernel verity". */
	if (u.d.digest_algorithm != FS_VERITY_HASH_ALG_SHA256 || u.d.digest_size != CFS_DIGEST_SIZE)
		return -EOPNOTSUPP;
	memcpy(ret_digest, u.d.digest, CFS_DIGEST_SIZE);
	return 0;
}

static int kernel_enable(void *userdata, int fd)
{
	struct fsverity_enable_arg arg;

	memset(&arg, 0, sizeof(arg));
	arg.version = 1;
	arg.hash_algorithm = FS_VERITY_HASH_ALG_SHA256;
	arg.block_size = CFS_VERITY_BLOCK_SIZE;
	if (ioctl(fd, FS_IOC_ENABLE_VERITY, &arg) < 0)
		return -errno;
	return 0;
}

const struct cfs_verity_ops cfs_verity_kernel_ops = {
	.measure = kernel_measure,
	.enable = kernel_enable,
	.userdata = NULL,
};
