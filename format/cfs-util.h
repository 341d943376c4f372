/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Small helpers shared by every module: scope-bound cleanup, ownership
 * steals, checked arithmetic and hex conversion.  Header-only, no policy.
 */
#pragma once

#include <errno.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#ifndef EFSCORRUPTED
#define EFSCORRUPTED EUCLEAN /* what erofs and xfs return for a corrupt image */
#endif

#define CFS_DIGEST_SIZE 32 /* SHA-256 fs-verity digest */

#define _cleanup_(f) __attribute__((cleanup(f)))
#define _unused_ __attribute__((unused))
#define _likely_(x) __builtin_expect(!!(x), 1)
#define _unlikely_(x) __builtin_expect(!!(x), 0)

#define ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))

static inline void freep(void *p)
{
	free(*(void **)p);
}
#define _cleanup_free_ _cleanup_(freep)

static inline void closep(int *fd)
{
	if (*fd >= 0) {
		int saved = errno;
		close(*fd);
		errno = saved;
	}
}
#define _cleanup_close_ _cleanup_(closep)

static inline void fclosep(FILE **f)
{
	if (*f)
		fclose(*f);
}
#define _cleanup_fclose_ _cleanup_(fclosep)

/* Hand an owned pointer or fd out of a cleanup scope. */
static inline void *steal_ptr(void *pp)
{
	void **p = pp, *v = *p;
	*p = NULL;
	return v;
}
static inline int steal_fd(int *fd)
{
	int v = *fd;
	*fd = -EBADF;
	return v;
}

/* Make room for @need elements of @size bytes in the array whose pointer
 * is at @parray (a T **) and whose capacity is *@cap, doubling it (from
 * 16).  Returns 0, or -ENOMEM with the array left as it was.  The pointer
 * is read and written with memcpy() so that any T * can be passed without
 * breaking strict aliasing.  Use through CFS_GROW(). */
static inline int cfs_grow(void *parray, size_t *cap, size_t need, size_t size)
{
	size_t n = *cap ? *cap : 16;
	void *p, *q;

	if (need <= *cap)
		return 0;
	while (n < need) {
		if (n > SIZE_MAX / 2)
			return -ENOMEM;
		n *= 2;
	}
	memcpy(&p, parray, sizeof(p));
	q = reallocarray(p, n, size);
	if (!q)
		return -ENOMEM;
	memcpy(parray, &q, sizeof(q));
	*cap = n;
	return 0;
}
#define CFS_GROW(array, cap, need) cfs_grow(&(array), &(cap), (need), sizeof(*(array)))

/* Define foo_unrefp() for use with _cleanup_() from foo_unref(). */
#define CFS_DEFINE_CLEANUP(type, func)                 \
	static inline void func##p(type *p)            \
	{                                              \
		if (*p)                                \
			(void)func(*p);                \
	}

/* write() all @len bytes, retrying EINTR.  0, or -errno (-ENOSPC if
 * write() stops making progress). */
static inline int cfs_write_all(int fd, const void *buf, size_t len)
{
	const uint8_t *p = buf;

	while (len > 0) {
		ssize_t n = write(fd, p, len);

		if (n < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		if (n == 0)
			return -ENOSPC;
		p += n;
		len -= (size_t)n;
	}
	return 0;
}

/* pread() until @len bytes or end of file, retrying EINTR.  The bytes read
 * (fewer than @len only at end of file) or -errno. */
static inline ssize_t cfs_pread_full(int fd, void *buf, size_t len, uint64_t off)
{
	size_t done = 0;

	while (done < len) {
		ssize_t n = pread(fd, (uint8_t *)buf + done, len - done, (off_t)(off + done));

		if (n < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		if (n == 0)
			break;
		done += (size_t)n;
	}
	return (ssize_t)done;
}

static inline bool cfs_range_ok(uint64_t off, uint64_t len, uint64_t size)
{
	uint64_t end;
	return !__builtin_add_overflow(off, len, &end) && end <= size;
}

static inline int cfs_hexval(int c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

/* Parse exactly 64 hex digits into a digest.  Returns 0 or -EINVAL. */
static inline int cfs_digest_from_hex(const char *hex, uint8_t out[CFS_DIGEST_SIZE])
{
	for (size_t i = 0; i < CFS_DIGEST_SIZE; i++) {
		int hi = cfs_hexval(hex[2 * i]), lo;
		if (hi < 0)
			return -EINVAL;
		lo = cfs_hexval(hex[2 * i + 1]);
		if (lo < 0)
			return -EINVAL;
		out[i] = (uint8_t)(hi << 4 | lo);
	}
	return hex[2 * CFS_DIGEST_SIZE] == '\0' ? 0 : -EINVAL;
}

/* Write 64 lowercase hex digits and a NUL into out[65]. */
static inline void cfs_digest_to_hex(const uint8_t d[CFS_DIGEST_SIZE], char out[2 * CFS_DIGEST_SIZE + 1])
{
	static const char hexd[] = "0123456789abcdef";
	for (size_t i = 0; i < CFS_DIGEST_SIZE; i++) {
		out[2 * i] = hexd[d[i] >> 4];
		out[2 * i + 1] = hexd[d[i] & 15];
	}
	out[2 * CFS_DIGEST_SIZE] = '\0';
}
