/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * composefs-info sign / verify-signature: fs-verity built-in signatures of
 * images, interchangeable with `fsverity sign` (Debian's fsverity package):
 * the same PKCS#7 over the same formatted digest, so a signature made by
 * either is accepted by composefs-fuse -o signature= and by the kernel.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cas.h"
#include "cfs-image.h"
#include "info-sign.h"

/* The image's bytes (checked to be an image) and its digest. */
static int image_digest(const char *path, struct cfs_image **ret_img, uint8_t digest[CFS_DIGEST_SIZE])
{
	_cleanup_close_ int fd = open(path, O_RDONLY | O_CLOEXEC);
	struct cfs_img_diag diag;
	const uint8_t *bytes;
	size_t size;
	int r;

	if (fd < 0) {
		fprintf(stderr, "composefs-info: Failed to open '%s': %s\n", path, strerror(errno));
		return -errno;
	}
	r = cfs_img_open_fd_ex(fd, 0, &diag, ret_img);
	if (r < 0) {
		fprintf(stderr, "composefs-info: Failed to load '%s': %s\n", path,
			diag.reason[0] ? diag.reason : strerror(-r));
		return r;
	}
	bytes = cfs_img_bytes(*ret_img, &size);
	r = cfs_fsverity_digest_mem(bytes, size, digest);
	if (r < 0)
		fprintf(stderr, "composefs-info: '%s': computing the digest: %s\n", path, strerror(-r));
	return r;
}

int cfs_info_sign(const char *image, const char *key, const char *cert, const char *out)
{
	_cleanup_(cfs_img_unrefp) struct cfs_image *img = NULL;
	_cleanup_free_ uint8_t *sig = NULL;
	_cleanup_free_ char *tmp = NULL;
	_cleanup_close_ int fd = -EBADF;
	uint8_t digest[CFS_DIGEST_SIZE];
	size_t len = 0;
	int r;

	if (!key || !cert || !out) {
		fprintf(stderr, "composefs-info: sign needs --key=KEY.pem --cert=CERT.pem --out=FILE\n");
		return -EINVAL;
	}
	r = image_digest(image, &img, digest);
	if (r < 0)
		return r;
	r = cfs_signature_sign(digest, key, cert, &sig, &len);
	if (r < 0) {
		fprintf(stderr, "composefs-info: signing '%s' with key '%s' and certificate '%s' failed: %s\n",
			image, key, cert, strerror(-r));
		return r;
	}
	/* Written whole or not at all. */
	if (asprintf(&tmp, "%s.tmpXXXXXX", out) < 0)
		return -ENOMEM;
	fd = mkostemp(tmp, O_CLOEXEC);
	if (fd < 0) {
		fprintf(stderr, "composefs-info: cannot create '%s': %s\n", tmp, strerror(errno));
		return -errno;
	}
	r = cfs_write_all(fd, sig, len);
	if (r == 0 && fchmod(fd, 0644) < 0)
		r = -errno;
	if (r == 0 && close(steal_fd(&fd)) < 0)
		r = -errno;
	if (r == 0 && rename(tmp, out) < 0)
		r = -errno;
	if (r < 0) {
		(void)unlink(tmp);
		fprintf(stderr, "composefs-info: writing '%s': %s\n", out, strerror(-r));
	}
	return r;
}

int cfs_info_verify_signature(const char *image, const char *sig, const char *certs)
{
	_cleanup_(cfs_img_unrefp) struct cfs_image *img = NULL;
	uint8_t digest[CFS_DIGEST_SIZE];
	char reason[512] = "";
	const uint8_t *bytes;
	size_t size;
	int r;

	if (!sig || !certs) {
		fprintf(stderr, "composefs-info: verify-signature needs --signature=FILE --cert=FILE[:FILE...]\n");
		return -EINVAL;
	}
	r = image_digest(image, &img, digest);
	if (r < 0)
		return r;
	bytes = cfs_img_bytes(img, &size);
	r = cfs_signature_verify_file(sig, certs, digest, bytes, size, reason, sizeof(reason));
	if (r < 0) {
		fprintf(stderr, "composefs-info: '%s': signature '%s' refused: %s\n", image, sig,
			reason[0] ? reason : strerror(-r));
		return r;
	}
	printf("%s: signature %s: OK\n", image, sig);
	return 0;
}
