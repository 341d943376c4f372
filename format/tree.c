/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * The in-memory tree the writer serialises: nodes, sorted children, xattrs
 * with upstream's size budget, and building a tree from a directory.
 */
#include <dirent.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/xattr.h>
#include <unistd.h>

#include "erofs-disk.h"
#include "writer-internal.h"

char *cfs_strdup_printf(const char *fmt, ...)
{
	va_list ap;
	char *s;
	int r;

	va_start(ap, fmt);
	r = vasprintf(&s, fmt, ap);
	va_end(ap);
	return r < 0 ? NULL : s;
}

struct cfs_node *cfs_node_new(void)
{
	struct cfs_node *node = calloc(1, sizeof(*node));

	if (node)
		node->nlink = 1;
	return node;
}

static void node_free_data(struct cfs_node *node)
{
	free(node->name);
	free(node->payload);
	free(node->content);
	for (size_t i = 0; i < node->n_xattrs; i++) {
		free(node->xattrs[i].key);
		free(node->xattrs[i].value);
	}
	free(node->xattrs);
	free(node->children);
	free(node);
}

struct cfs_node *cfs_node_free(struct cfs_node *node)
{
	/* Iterative post-order walk: hostile dumps may nest deeply. */
	struct cfs_node *cur = node;

	if (!node)
		return NULL;
	node->parent = NULL; /* stop the walk at the node we were given */
	while (cur) {
		if (cur->n_children > 0) {
			cur = cur->children[--cur->n_children];
			continue;
		}
		struct cfs_node *up = cur->parent;
		node_free_data(cur);
		cur = up;
	}
	return NULL;
}

/* Binary search; *ret_pos gets the insert position when not found. */
static struct cfs_node *bsearch_child(const struct cfs_node *node, const char *name, size_t *ret_pos)
{
	size_t lo = 0, hi = node->n_children;

	/* Sorted input appends at the end: check that first. */
	if (hi > 0) {
		int c = strcmp(name, node->children[hi - 1]->name);
		if (c == 0) {
			if (ret_pos)
				*ret_pos = hi - 1;
			return node->children[hi - 1];
		}
		if (c > 0) {
			if (ret_pos)
				*ret_pos = hi;
			return NULL;
		}
	}
	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;
		int c = strcmp(name, node->children[mid]->name);
		if (c == 0) {
			if (ret_pos)
				*ret_pos = mid;
			return node->children[mid];
		}
		if (c < 0)
			hi = mid;
		else
			lo = mid + 1;
	}
	if (ret_pos)
		*ret_pos = lo;
	return NULL;
}

struct cfs_node *cfs_node_lookup_child(const struct cfs_node *node, const char *name)
{
	return bsearch_child(node, name, NULL);
}

int cfs_node_add_child(struct cfs_node *parent, struct cfs_node *child, const char *name)
{
	size_t len, pos;
	char *dup;

	if (!cfs_node_is_dir(parent))
		return -ENOTDIR;
	len = strlen(name);
	if (len == 0)
		return -EINVAL;
	if (len > EROFS_NAME_LEN)
		return -ENAMETOOLONG;
	if (child->name || child->parent)
		return -EMLINK;
	if (bsearch_child(parent, name, &pos))
		return -EEXIST;
	if (CFS_GROW(parent->children, parent->children_cap, parent->n_children + 1) < 0)
		return -ENOMEM;
	dup = strdup(name);
	if (!dup)
		return -ENOMEM;
	memmove(parent->children + pos + 1, parent->children + pos,
		(parent->n_children - pos) * sizeof(*parent->children));
	parent->children[pos] = child;
	parent->n_children++;
	child->parent = parent;
	child->name = dup;
	return 0;
}

char *cfs_node_path(const struct cfs_node *node)
{
	size_t len = 0;
	char *s, *p;

	for (const struct cfs_node *n = node; n->parent; n = n->parent)
		len += 1 + strlen(n->name);
	s = malloc(len ? len + 1 : 2);
	if (!s)
		return NULL;
	if (len == 0)
		return strcpy(s, "/");
	p = s + len;
	*p = '\0';
	for (const struct cfs_node *n = node; n->parent; n = n->parent) {
		size_t l = strlen(n->name);
		p -= l;
		memcpy(p, n->name, l);
		*--p = '/';
	}
	return s;
}

struct cfs_node *cfs_node_follow(struct cfs_node *node)
{
	struct cfs_node *slow = node;

	/* Floyd's cycle finding: a chain may run into a loop that does not
	 * pass through @node again (a -> b -> c -> b). */
	while (node->link_to) {
		node = node->link_to;
		if (!node->link_to)
			break;
		node = node->link_to;
		slow = slow->link_to;
		if (slow == node)
			return NULL;
	}
	return node;
}

int cfs_node_set_payload(struct cfs_node *node, const char *payload)
{
	char *dup = NULL;

	if (payload) {
		if (strlen(payload) >= CFS_PATH_MAX)
			return -ENAMETOOLONG;
		dup = strdup(payload);
		if (!dup)
			return -ENOMEM;
	}
	free(node->payload);
	node->payload = dup;
	return 0;
}

int cfs_node_set_content(struct cfs_node *node, const void *data, size_t len)
{
	uint8_t *dup = NULL;

	if (data && len > 0) {
		if (len > CFS_INLINE_CONTENT_MAX)
			return -EINVAL;
		dup = malloc(len);
		if (!dup)
			return -ENOMEM;
		memcpy(dup, data, len);
	}
	free(node->content);
	node->content = dup;
	node->size = len;
	return 0;
}

static ssize_t find_xattr(const struct cfs_node *node, const char *key)
{
	for (size_t i = 0; i < node->n_xattrs; i++)
		if (strcmp(node->xattrs[i].key, key) == 0)
			return (ssize_t)i;
	return -1;
}

const struct cfs_xattr *cfs_node_get_xattr(const struct cfs_node *node, const char *key)
{
	ssize_t i = find_xattr(node, key);

	return i < 0 ? NULL : &node->xattrs[i];
}

int cfs_node_unset_xattr(struct cfs_node *node, const char *key)
{
	ssize_t i = find_xattr(node, key);
	size_t cost;

	if (i < 0)
		return -ENODATA;
	cost = 2 * CFS_XATTR_ENTRY_COST - 1 + strlen(key) + node->xattrs[i].value_len;
	free(node->xattrs[i].key);
	free(node->xattrs[i].value);
	node->xattrs[i] = node->xattrs[node->n_xattrs - 1];
	node->n_xattrs--;
	/* Same bookkeeping as upstream, including its unsigned wrap-around:
	 * the ibody header is only given back with the last xattr. */
	if (node->n_xattrs == 0)
		node->xattr_budget = 0;
	else
		node->xattr_budget -= cost;
	return 0;
}

int cfs_node_set_xattr(struct cfs_node *node, const char *key, const void *value, size_t len)
{
	size_t klen = strlen(key), cost;
	struct cfs_xattr *xs;
	char *k;
	uint8_t *v;

	if (klen == 0 || klen > CFS_XATTR_NAME_MAX)
		return -ERANGE;
	if (len > UINT16_MAX)
		return -EINVAL;
	(void)cfs_node_unset_xattr(node, key);

	cost = 2 * CFS_XATTR_ENTRY_COST - 1 + klen + len;
	if (node->n_xattrs == 0)
		cost += CFS_XATTR_IBODY_COST;
	if (node->xattr_budget + cost > CFS_XATTR_EXTERNAL_MAX)
		return -ERANGE;

	if (CFS_GROW(node->xattrs, node->xattrs_cap, node->n_xattrs + 1) < 0)
		return -ENOMEM;
	xs = node->xattrs;
	k = strdup(key);
	v = malloc(len ? len : 1);
	if (!k || !v) {
		free(k);
		free(v);
		return -ENOMEM;
	}
	if (len)
		memcpy(v, value, len);
	xs[node->n_xattrs++] = (struct cfs_xattr){ .key = k, .value = v, .value_len = (uint16_t)len,
						   .shared_off = -1 };
	node->xattr_budget += cost;
	return 0;
}

/* ---- Scanning a directory ---------------------------------------------- */

struct inode_key {
	dev_t dev;
	ino_t ino;
	struct cfs_node *node;
};

struct scan {
	unsigned flags;
	/* Open-addressing table of multiply-linked inodes seen so far. */
	struct inode_key *slots;
	size_t n_slots, n_used;
};

static size_t inode_hash(dev_t dev, ino_t ino, size_t n)
{
	uint64_t h = (uint64_t)ino * 0x9E3779B97F4A7C15ULL ^ (uint64_t)dev * 0xC2B2AE3D27D4EB4FULL;
	return (size_t)(h ^ (h >> 29)) & (n - 1);
}

static int inode_table_grow(struct scan *s)
{
	size_t n = s->n_slots ? s->n_slots * 2 : 256;
	struct inode_key *slots = calloc(n, sizeof(*slots));

	if (!slots)
		return -ENOMEM;
	for (size_t i = 0; i < s->n_slots; i++) {
		struct inode_key *k = &s->slots[i];
		if (!k->node)
			continue;
		size_t j = inode_hash(k->dev, k->ino, n);
		while (slots[j].node)
			j = (j + 1) & (n - 1);
		slots[j] = *k;
	}
	free(s->slots);
	s->slots = slots;
	s->n_slots = n;
	return 0;
}

/* Find the first node seen for (dev, ino), or remember @node for it. */
static int inode_table_find_or_add(struct scan *s, const struct stat *st, struct cfs_node *node,
				   struct cfs_node **ret_first)
{
	size_t j;
	int r;

	if ((s->n_used + 1) * 2 > s->n_slots) {
		r = inode_table_grow(s);
		if (r < 0)
			return r;
	}
	j = inode_hash(st->st_dev, st->st_ino, s->n_slots);
	while (s->slots[j].node) {
		if (s->slots[j].dev == st->st_dev && s->slots[j].ino == st->st_ino) {
			*ret_first = s->slots[j].node;
			return 0;
		}
		j = (j + 1) & (s->n_slots - 1);
	}
	s->slots[j] = (struct inode_key){ .dev = st->st_dev, .ino = st->st_ino, .node = node };
	s->n_used++;
	*ret_first = NULL;
	return 0;
}

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
		r = inode_table_find_or_add(s, &st, child, &first);
		if (r < 0)
			return r;
	}
	if (first) {
		/* A later path of an inode already in the tree: only a
		 * directory entry, like an '@' line of a dump. */
		cfs_node_free(child);
		child = cfs_node_new();
		if (!child)
			return -ENOMEM;
		child->mode = first->mode;
		child->link_to = first;
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
	free(s.slots);
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
