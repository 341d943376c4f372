/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Output of the image-writing programs: the image is built in memory and
 * written only once complete, through a temporary file in the target
 * directory that is renamed over the target, so a failure leaves nothing.
 */
#pragma once

#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cfs-util.h"

/* Print "PROGRAM: message" as one line on stderr and exit 1.  Control
 * characters (from file names, say) are shown as \xHH so that the message
 * stays on one line. */
__attribute__((noreturn, format(printf, 1, 2))) static inline void die(const char *fmt, ...)
{
	char *msg = NULL;
	va_list ap;
	int n;

	va_start(ap, fmt);
	n = vasprintf(&msg, fmt, ap);
	va_end(ap);
	fprintf(stderr, "%s: ", program_invocation_short_name);
	if (n < 0 || !msg) {
		fputs("out of memory\n", stderr);
		exit(EXIT_FAILURE);
	}
	for (const unsigned char *p = (const unsigned char *)msg; *p; p++) {
		if (*p < 0x20 || *p == 0x7f)
			fprintf(stderr, "\\x%02x", *p);
		else
			fputc(*p, stderr);
	}
	fputc('\n', stderr);
	free(msg);
	exit(EXIT_FAILURE);
}

struct membuf {
	uint8_t *data;
	size_t len, cap;
};

/* A cfs_write_fn appending to a struct membuf. */
static inline int membuf_write(void *userdata, const void *buf, size_t len)
{
	struct membuf *m = userdata;

	if (m->cap - m->len < len) {
		size_t cap = m->cap ? m->cap : 1 << 20;
		while (cap - m->len < len) {
			if (cap > SIZE_MAX / 2)
				return -ENOMEM;
			cap *= 2;
		}
		uint8_t *n = realloc(m->data, cap);
		if (!n)
			return -ENOMEM;
		m->data = n;
		m->cap = cap;
	}
	memcpy(m->data + m->len, buf, len);
	m->len += len;
	return 0;
}

/* Write @img to @out ("-": stdout, refused if a terminal).  Targets that
 * are not plain files in a directory of their own (a device, a pipe,
 * /proc/self/fd/N, /dev/stdout) are written in place, as upstream does.  On failure *ret_err gets a
 * malloc'ed "PATH: reason". */
static inline int output_write(const char *out, const struct membuf *img, char **ret_err)
{
	_cleanup_free_ char *tmp = NULL;
	const char *slash, *what;
	struct stat st;
	mode_t mask;
	int fd, r;

	if (strcmp(out, "-") == 0) {
		if (isatty(STDOUT_FILENO)) {
			*ret_err = strdup("stdout is a terminal, refusing to write an image to it");
			return -EINVAL;
		}
		r = cfs_write_all(STDOUT_FILENO, img->data, img->len);
		if (r < 0 && asprintf(ret_err, "stdout: %s", strerror(-r)) < 0)
			*ret_err = NULL;
		return r;
	}
	if (strncmp(out, "/proc/", 6) == 0 || strncmp(out, "/dev/fd/", 8) == 0 ||
	    strcmp(out, "/dev/stdout") == 0 || strcmp(out, "/dev/stderr") == 0 ||
	    (stat(out, &st) == 0 && !S_ISREG(st.st_mode))) {
		what = "cannot open";
		fd = open(out, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0666);
		r = fd < 0 ? -errno : 0;
		if (r >= 0) {
			what = "cannot write";
			r = cfs_write_all(fd, img->data, img->len);
			if (close(fd) < 0 && r >= 0)
				r = -errno;
		}
		goto out;
	}
	slash = strrchr(out, '/');
	if (asprintf(&tmp, "%.*s.%s.tmpXXXXXX", slash ? (int)(slash - out + 1) : 0, out,
		     slash ? slash + 1 : out) < 0) {
		tmp = NULL;
		*ret_err = NULL;
		return -ENOMEM;
	}
	what = "cannot create output file";
	fd = mkostemp(tmp, O_CLOEXEC);
	if (fd < 0) {
		r = -errno;
		goto out;
	}
	mask = umask(0);
	umask(mask);
	what = "cannot write";
	r = cfs_write_all(fd, img->data, img->len);
	if (r >= 0 && fchmod(fd, 0666 & ~mask) < 0)
		r = -errno;
	if (r >= 0 && fsync(fd) < 0)
		r = -errno;
	if (close(fd) < 0 && r >= 0)
		r = -errno;
	if (r >= 0 && rename(tmp, out) < 0)
		r = -errno;
	if (r < 0)
		unlink(tmp);
out:
	if (r < 0 && asprintf(ret_err, "%s: %s: %s", out, what, strerror(-r)) < 0)
		*ret_err = NULL;
	return r;
}
