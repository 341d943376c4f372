/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Why a reader call failed: the one-line detail of the last -EFSCORRUPTED
 * or -EOPNOTSUPP of this thread (cfs_img_error_detail() in cfs-image.h).
 * Thread-local, so the accessors stay lock-free; only written on errors.
 * The lowest file of the reader: every other one reports through it.
 */
#include <stdarg.h>
#include <stdio.h>

#include "image-priv.h"

static __thread char err_detail[192];

const char *cfs_img_error_detail(void)
{
	return err_detail;
}

int cfs_img_vfail(int err, const char *fmt, va_list ap)
{
	vsnprintf(err_detail, sizeof(err_detail), fmt, ap);
	return err;
}

int cfs_img_fail(int err, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	cfs_img_vfail(err, fmt, ap);
	va_end(ap);
	return err;
}
