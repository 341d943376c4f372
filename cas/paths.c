/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Paths: the list of store directories as every tool reads it, redirect
 * paths from the (hostile) image checked before use, and files opened
 * beneath a store directory without ever leaving it.
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/openat2.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "cas-internal.h"

#ifndef SYS_openat2
#define SYS_openat2 437
#endif

void cfs_strv_free(char **v)
{
	for (char **p = v; p && *p; p++)
		free(*p);
	free(v);
}

int cfs_basedirs_parse(const char *spec, char ***ret_dirs)
{
	char **v;
	const char *p;
	struct stat st;
	size_t n = 1;

	if (!spec || !spec[0])
		return -EINVAL;
	/* A directory whose own name has a ':' (upstream takes one
	 * directory) is that directory, not a list. */
	if (!strchr(spec, ':') || (stat(spec, &st) == 0 && S_ISDIR(st.st_mode)))
		n = 1;
	else
		for (p = spec; *p; p++)
			n += *p == ':';
	v = calloc(n + 1, sizeof(*v));
	if (!v)
		return -ENOMEM;
	p = spec;
	for (size_t i = 0; i < n; i++) {
		const char *end = n == 1 ? p + strlen(p) : strchrnul(p, ':');

		if (end == p) {
			cfs_strv_free(v);
			return -EINVAL; /* an empty name between two ':' or at an end */
		}
		v[i] = strndup(p, (size_t)(end - p));
		if (!v[i]) {
			cfs_strv_free(v);
			return -ENOMEM;
		}
		p = *end ? end + 1 : end;
	}
	*ret_dirs = v;
	return (int)n;
}

/*
 * Redirect paths from the image are hostile.  Accept "[/]comp/comp/...":
 * one leading '/' is stripped (overlayfs redirects are absolute within the
 * data layer); then no empty, "." or ".." component and no NUL byte.
 */
int cfs_redirect_normalize(const char *redirect, size_t len, char **ret_key)
{
	const char *p, *end;
	char *s;

	if (len > 0 && redirect[0] == '/') {
		redirect++;
		len--;
	}
	if (len == 0)
		return -EPERM;
	if (len >= PATH_MAX)
		return -ENAMETOOLONG;
	if (memchr(redirect, '\0', len))
		return -EPERM;
	end = redirect + len;
	for (p = redirect; p <= end;) {
		const char *slash = memchr(p, '/', (size_t)(end - p));
		size_t clen = (size_t)((slash ? slash : end) - p);

		if (clen == 0 || (clen == 1 && p[0] == '.') || (clen == 2 && p[0] == '.' && p[1] == '.'))
			return -EPERM;
		if (clen > NAME_MAX)
			return -ENAMETOOLONG;
		if (!slash)
			break;
		p = slash + 1;
	}
	s = strndup(redirect, len);
	if (!s)
		return -ENOMEM;
	*ret_key = s;
	return 0;
}

static int map_resolve_error(int err)
{
	/* ELOOP: a symlink (RESOLVE_NO_SYMLINKS / O_NOFOLLOW); EXDEV: the
	 * path would leave the base directory; ENOTDIR: a non-directory (or a
	 * symlink) where a directory was needed. */
	if (err == ELOOP || err == EXDEV || err == ENOTDIR)
		return -EPERM;
	return -err;
}

/* Fallback for kernels without openat2(): walk component by component,
 * never following a symlink.  The path is already normalized. */
static int open_walk(int dirfd, const char *path)
{
	_cleanup_close_ int cur = -EBADF;
	const char *p = path;
	int at = dirfd;

	for (;;) {
		const char *slash = strchr(p, '/');
		char comp[NAME_MAX + 1];
		size_t clen = slash ? (size_t)(slash - p) : strlen(p);
		int fd;

		if (clen == 0 || clen > NAME_MAX)
			return -EPERM;
		memcpy(comp, p, clen);
		comp[clen] = '\0';
		if (strcmp(comp, ".") == 0 || strcmp(comp, "..") == 0)
			return -EPERM;
		if (!slash) {
			fd = openat(at, comp, O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK | O_NOCTTY);
			return fd < 0 ? map_resolve_error(errno) : fd;
		}
		fd = openat(at, comp, O_PATH | O_DIRECTORY | O_CLOEXEC | O_NOFOLLOW);
		if (fd < 0)
			return map_resolve_error(errno);
		closep(&cur);
		cur = fd;
		at = fd;
		p = slash + 1;
	}
}

int cfs_open_beneath(int dirfd, const char *path, bool *have_openat2)
{
	if (__atomic_load_n(have_openat2, __ATOMIC_RELAXED)) {
		struct open_how how = {
			.flags = O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK | O_NOCTTY,
			.resolve = RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS,
		};
		long fd = syscall(SYS_openat2, dirfd, path, &how, sizeof(how));

		if (fd >= 0)
			return (int)fd;
		if (errno != ENOSYS)
			return map_resolve_error(errno);
		__atomic_store_n(have_openat2, false, __ATOMIC_RELAXED);
	}
	return open_walk(dirfd, path);
}
