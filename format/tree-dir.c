/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Building a tree from a directory (cfs_tree_from_dir()): metadata, symlink
 * targets and xattrs, in sorted depth-first order, with hard links kept.
 */
#include <dirent.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/xattr.h>
#include <unistd.h>

#include "writer-internal.h"

struct scan {
	unsigned flags;
	struct cfs_node_table inodes; /* multiply-linked inodes seen so far, by (dev, ino) */
};

static int read_xattrs(struct scan *s, int fd, struct cfs_node *node)
{
	char path[64];
	_cleanup_free_ char *list = NULL;
	ssize_t n;

	snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
	for (;;) {
		n = listxattr(path, NULL, 0);
		if (n < 0)
			return errno == ENOTSUP ? 0 : -errno;
		if (n == 0)
			return 0;
		free(list);
		list = malloc((size_t)n);
		if (!list)
			return -ENOMEM;
		ssize_t m = listxattr(path, list, (size_t)n);
		if (m >= 0) {
			n = m;
			break;
		}
		if (errno != ERANGE)
			return -errno;
	}
	for (const char *it = list; it < list + n; it += strlen(it) + 1) {
		_cleanup_free_ char *value = NULL;
		ssize_t vlen;

		if ((s->flags & CFS_SCAN_USER_XATTRS) && !cfs_has_prefix(it, "user."))
			continue;
		for (;;) {
			vlen = getxattr(path, it, NULL, 0);
			if (vlen < 0)
				return -errno;
			/* With size 0 getxattr() only reports the size: asking
			 * again would take a value that grew meanwhile as the
			 * length of a 1-byte buffer. */
			if (vlen == 0)
				break;
			free(value);
			value = malloc((size_t)vlen);
			if (!value)
				return -ENOMEM;
			ssize_t m = getxattr(path, it, value, (size_t)vlen);
			if (m >= 0) {
				vlen = m;
				break;
			}
			if (errno != ERANGE)
				return -errno;
		}
		int r = cfs_node_set_xattr(node, it, value, (size_t)vlen);
		if (r < 0)
			return r;
	}
	return 0;
}

static char *join_path(const char *a, const char *b)
{
	if (!b)
		return strdup(a);
	return cfs_strdup_printf("%s%s%s", a, (*a && a[strlen(a) - 1] != '/') ? "/" : "", b);
}

/* Load the node for @name in @dirfd (metadata only). */
static int load_node(struct scan *s, int dirfd, const char *name, struct stat *st,
		     struct cfs_node **ret)
{
	_cleanup_(cfs_node_freep) struct cfs_node *node = NULL;
	_cleanup_close_ int fd = -EBADF;
	int r;

	if (fstatat(dirfd, name, st, AT_SYMLINK_NOFOLLOW) < 0)
		return -errno;
	node = cfs_node_new();
	if (!node)
		return -ENOMEM;
	node->mode = st->st_mode;
	node->uid = st->st_uid;
	node->gid = st->st_gid;
	node->rdev = (uint32_t)st->st_rdev;
	node->size = (uint64_t)st->st_size;
	if (!(s->flags & CFS_SCAN_USE_EPOCH)) {
		node->mtime_sec = st->st_mtim.tv_sec;
		node->mtime_nsec = (uint32_t)st->st_mtim.tv_nsec;
	}
	if (S_ISLNK(st->st_mode)) {
		char target[CFS_PATH_MAX + 1];
		ssize_t n = readlinkat(dirfd, name, target, sizeof(target) - 1);
		if (n < 0)
			return -errno;
		target[n] = '\0';
		if (n == 0)
			return -EINVAL;
		r = cfs_node_set_payload(node, target);
		if (r < 0)
			return r;
		node->size = (uint64_t)n;
	}
	if (!(s->flags & CFS_SCAN_SKIP_XATTRS)) {
		fd = openat(dirfd, name, O_PATH | O_NOFOLLOW | O_CLOEXEC);
		if (fd < 0)
			return -errno;
		r = read_xattrs(s, fd, node);
		if (r < 0)
			return r;
	}
	*ret = steal_ptr(&node);
	return 0;
}

static int cmp_names(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

static void free_names(char **names, size_t n)
{
	for (size_t i = 0; i < n; i++)
		free(names[i]);
	free(names);
}

/* Sorted entry names of the directory open at @dfd (takes @dfd). */
static int read_dir_names(int dfd, char ***ret_names, size_t *ret_n)
{
	DIR *dir = fdopendir(dfd);
	char **names = NULL;
	size_t n = 0, cap = 0;
	struct dirent *de;
	int r = 0;

	if (!dir) {
		r = -errno;
		close(dfd);
		return r;
	}
	for (;;) {
		errno = 0;
		de = readdir(dir);
		if (!de) {
			r = -errno;
			break;
		}
		if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0)
			continue;
		r = CFS_GROW(names, cap, n + 1);
		if (r < 0)
			break;
		names[n] = strdup(de->d_name);
		if (!names[n]) {
			r = -ENOMEM;
			break;
		}
		n++;
	}
	closedir(dir);
	if (r < 0) {
		free_names(names, n);
		return r;
	}
	if (n > 1)
		qsort(names, n, sizeof(*names), cmp_names);
	*ret_names = names;
	*ret_n = n;
	return 0;
}

/* Add the entry @name of directory @dfd (at @path) to @node. */
static int scan_entry(struct scan *s, int dfd, struct cfs_node *node, const char *path,
		      const char *name, char **ret_failed);

/* Fill directory @node (open at @dfd, borrowed) in sorted depth-first
 * order, so that the first path of a hard-linked inode is also the first in
 * dump order. */
static int scan_dir(struct scan *s, int dfd, struct cfs_node *node, const char *path,
		    char **ret_failed)
{
	char **names = NULL;
	size_t n = 0;
	int dup_fd, r;

	dup_fd = fcntl(dfd, F_DUPFD_CLOEXEC, 3);
	if (dup_fd < 0)
		r = -errno;
	else
		r = read_dir_names(dup_fd, &names, &n);
	if (r < 0) {
		*ret_failed = strdup(path);
		return r;
	}
	for (size_t i = 0; i < n && r >= 0; i++)
		r = scan_entry(s, dfd, node, path, names[i], ret_failed);
	free_names(names, n);
	return r;
}

static int scan_entry(struct scan *s, int dfd, struct cfs_node *node, const char *path,
		      const char *name, char **ret_failed)
{
	_cleanup_(cfs_node_freep) struct cfs_node *child = NULL;
	_cleanup_free_ char *sub = join_path(path, name);
	struct cfs_node *first = NULL, *added;
	struct stat st;
	int r;

	if (!sub)
		return -ENOMEM;
	r = load_node(s, dfd, name, &st, &child);
	if (r < 0)
		goto fail;
	if ((s->flags & CFS_SCAN_SKIP_DEVICES) && (S_ISBLK(st.st_mode) || S_ISCHR(st.st_mode)))
		return 0;
	if (!S_ISDIR(st.st_mode) && st.st_nlink > 1) {
		first = cfs_node_table_find(&s->inodes, st.st_dev, st.st_ino);
		if (!first) {
			r = cfs_node_table_add(&s->inodes, st.st_dev, st.st_ino, child);
			if (r < 0)
				return r;
		}
	}
	if (first) {
		/* A later path of an inode already in the tree: only a
		 * directory entry, like an '@' line of a dump. */
		cfs_node_free(child);
		child = cfs_node_new_link(first);
		if (!child)
			return -ENOMEM;
		first->nlink++;
	}
	r = cfs_node_add_child(node, child, name);
	if (r < 0)
		goto fail;
	added = steal_ptr(&child);
	if (S_ISDIR(st.st_mode)) {
		_cleanup_close_ int cfd =
			openat(dfd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
		if (cfd < 0) {
			r = -errno;
			goto fail;
		}
		return scan_dir(s, cfd, added, sub, ret_failed);
	}
	return 0;
fail:
	*ret_failed = steal_ptr(&sub);
	return r;
}

int cfs_tree_from_dir(int dirfd, const char *path, unsigned flags, struct cfs_node **ret_root,
		      char **ret_failed_path)
{
	_cleanup_(cfs_node_freep) struct cfs_node *root = NULL;
	struct scan s = { .flags = flags };
	char *failed = NULL;
	struct stat st;
	int r;

	if ((flags & CFS_SCAN_SKIP_XATTRS) && (flags & CFS_SCAN_USER_XATTRS))
		return -EINVAL;
	r = load_node(&s, dirfd, path, &st, &root);
	if (r >= 0 && S_ISDIR(st.st_mode)) {
		_cleanup_close_ int dfd =
			openat(dirfd, path, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
		if (dfd < 0)
			r = -errno;
		else
			r = scan_dir(&s, dfd, root, path, &failed);
	}
	cfs_node_table_clear(&s.inodes);
	if (r < 0) {
		if (ret_failed_path)
			*ret_failed_path = failed ? failed : strdup(path);
		else
			free(failed);
		return r;
	}
	*ret_root = steal_ptr(&root);
	return 0;
}
