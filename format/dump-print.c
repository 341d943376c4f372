/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * The views `composefs-info` prints (dump, ls, objects), reproducing
 * upstream composefs 1.0.8 output exactly.
 *
 * The image is first loaded into a small tree with the semantics of
 * upstream's reader: the 256 whiteout character devices (0:0) are dropped,
 * overlay xattrs are hidden or unescaped, an escaped whiteout becomes a 0:0
 * character device again, the second and later entries of an inode become
 * hard links to the first one met in a depth-first walk, and children are
 * kept sorted by name.  Everything is bounds-checked by the reader; any
 * corruption aborts the load before anything is printed.  Both the load and
 * the print walk with explicit stacks, so a deep tree cannot exhaust the
 * C stack.
 */
#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "cfs-image.h"
#include "erofs-disk.h"
#include "image-internal.h"

#define INLINE_CONTENT_MAX 5000 /* upstream LCFS_INLINE_CONTENT_MAX */
#define XATTR_NAME_MAX_LEN 255
#define XATTR_SIZE_LIMIT UINT16_MAX /* upstream's per-inode xattr budget */

struct dxattr {
	char *name;
	const uint8_t *value; /* borrowed from the image */
	size_t len;
};

struct dnode {
	char *name;             /* NULL for the root */
	struct dnode *parent;
	struct dnode *link_to;  /* hard link: attributes are the target's */
	struct dnode **children;
	size_t n_children, cap_children;

	uint64_t nid;           /* for messages */
	uint32_t mode, nlink, uid, gid;
	uint64_t rdev, size;
	int64_t mtime;
	uint32_t mtime_nsec;
	char *payload;
	uint8_t *content;       /* inline file content, @size bytes at load */
	bool digest_set;
	uint8_t digest[CFS_DIGEST_SIZE];
	struct dxattr *xattrs;
	size_t n_xattrs, cap_xattrs;
	uint32_t *xslots;       /* name -> xattrs index + 1, see xslot_find() */
	size_t n_xslots, used_xslots;
	size_t xattr_size;      /* upstream's accounting, see node_set_xattr() */
};

struct nid_slot {
	uint64_t nid;
	struct dnode *node;
};

struct loader {
	const struct cfs_image *img;
	struct nid_slot *slots; /* open addressing, power-of-two size */
	size_t n_slots, used;
	struct dnode *root;
};

static void dnode_free(struct dnode *n)
{
	/* Iterative: frees a whole subtree without recursion. */
	while (n) {
		struct dnode *next;

		if (n->n_children) {
			struct dnode *c = n->children[--n->n_children];

			c->parent = n; /* reuse as the way back up */
			n = c;
			continue;
		}
		next = n->parent;
		for (size_t i = 0; i < n->n_xattrs; i++)
			free(n->xattrs[i].name);
		free(n->xattrs);
		free(n->xslots);
		free(n->children);
		free(n->name);
		free(n->payload);
		free(n->content);
		free(n);
		n = next;
	}
}

static size_t nid_hash(uint64_t nid, size_t mask)
{
	nid *= UINT64_C(0x9E3779B97F4A7C15);
	return (size_t)(nid >> 17) & mask;
}

static struct dnode *nid_find(const struct loader *l, uint64_t nid)
{
	if (!l->n_slots)
		return NULL;
	for (size_t i = nid_hash(nid, l->n_slots - 1);; i = (i + 1) & (l->n_slots - 1)) {
		if (!l->slots[i].node)
			return NULL;
		if (l->slots[i].nid == nid)
			return l->slots[i].node;
	}
}

static int nid_insert(struct loader *l, uint64_t nid, struct dnode *node)
{
	if ((l->used + 1) * 2 > l->n_slots) {
		size_t n = l->n_slots ? l->n_slots * 2 : 64;
		struct nid_slot *s = calloc(n, sizeof(*s));

		if (!s)
			return -ENOMEM;
		for (size_t i = 0; i < l->n_slots; i++) {
			size_t j;

			if (!l->slots[i].node)
				continue;
			for (j = nid_hash(l->slots[i].nid, n - 1); s[j].node; j = (j + 1) & (n - 1))
				;
			s[j] = l->slots[i];
		}
		free(l->slots);
		l->slots = s;
		l->n_slots = n;
	}
	size_t i = nid_hash(nid, l->n_slots - 1);
	while (l->slots[i].node)
		i = (i + 1) & (l->n_slots - 1);
	l->slots[i] = (struct nid_slot){ nid, node };
	l->used++;
	return 0;
}

/* An inode's xattrs by name: open addressing over n->xslots, whose values
 * are an index into n->xattrs plus one, XSLOT_EMPTY or XSLOT_GONE (a
 * removed name).  A hostile image may give one inode thousands of xattrs,
 * so that a linear search per xattr would make loading quadratic. */
#define XSLOT_EMPTY 0
#define XSLOT_GONE UINT32_MAX

static size_t xname_hash(const char *s)
{
	uint64_t h = UINT64_C(0xcbf29ce484222325); /* FNV-1a */

	for (; *s; s++)
		h = (h ^ (uint8_t)*s) * UINT64_C(0x100000001b3);
	return (size_t)(h ^ (h >> 32));
}

/* The slot holding @name, or the empty slot where its probe ends. */
static size_t xslot_find(const struct dnode *n, const char *name)
{
	size_t mask = n->n_xslots - 1;

	for (size_t i = xname_hash(name) & mask;; i = (i + 1) & mask) {
		uint32_t v = n->xslots[i];

		if (v == XSLOT_EMPTY)
			return i;
		if (v != XSLOT_GONE && strcmp(n->xattrs[v - 1].name, name) == 0)
			return i;
	}
}

/* Keep at least half of the slots empty (removed ones count as used). */
static int xslots_reserve(struct dnode *n)
{
	size_t want = 16;
	uint32_t *old = n->xslots;

	if (old && (n->used_xslots + 1) * 2 <= n->n_xslots)
		return 0;
	while (want < (n->n_xattrs + 1) * 4)
		want *= 2;
	n->xslots = calloc(want, sizeof(*n->xslots));
	if (!n->xslots) {
		n->xslots = old;
		return -ENOMEM;
	}
	free(old);
	n->n_xslots = want;
	for (size_t i = 0; i < n->n_xattrs; i++)
		n->xslots[xslot_find(n, n->xattrs[i].name)] = (uint32_t)i + 1;
	n->used_xslots = n->n_xattrs;
	return 0;
}

/* Upstream's lcfs_node_set_xattr_internal(): replace by name (the last
 * entry moves into the freed slot), with a per-inode size budget. */
static int node_set_xattr(struct dnode *n, char *name, const uint8_t *value, size_t len)
{
	const size_t meta = 2 * 4 - 1; /* twice the entry header, minus 1 for alignment */
	size_t namelen = strlen(name), entry, slot;
	struct dxattr *x;

	if (namelen == 0 || namelen > XATTR_NAME_MAX_LEN) {
		free(name);
		return cfs_img_fail(-EFSCORRUPTED, "inode nid %llu: xattr name of %zu bytes",
				    (unsigned long long)n->nid, namelen);
	}
	if (xslots_reserve(n) < 0) {
		free(name);
		return -ENOMEM;
	}
	slot = xslot_find(n, name);
	if (n->xslots[slot] != XSLOT_EMPTY) {
		size_t i = n->xslots[slot] - 1, last = n->n_xattrs - 1;
		size_t old = meta + strlen(n->xattrs[i].name) + n->xattrs[i].len;

		n->xslots[slot] = XSLOT_GONE;
		if (i != last)
			n->xslots[xslot_find(n, n->xattrs[last].name)] = (uint32_t)i + 1;
		free(n->xattrs[i].name);
		n->xattrs[i] = n->xattrs[last];
		n->n_xattrs--;
		n->xattr_size = n->n_xattrs ? n->xattr_size - old : 0;
		slot = xslot_find(n, name);
	}
	entry = meta + namelen + len;
	if (n->n_xattrs == 0)
		entry += 12; /* the ibody header */
	if (n->xattr_size + entry > XATTR_SIZE_LIMIT) {
		free(name);
		return cfs_img_fail(-EFBIG, "inode nid %llu: xattrs too large for a dump",
				    (unsigned long long)n->nid);
	}
	if (CFS_GROW(n->xattrs, n->cap_xattrs, n->n_xattrs + 1) < 0) {
		free(name);
		return -ENOMEM;
	}
	x = n->xattrs;
	x[n->n_xattrs++] = (struct dxattr){ name, value, len };
	n->xslots[slot] = (uint32_t)n->n_xattrs;
	n->used_xslots++;
	n->xattr_size += entry;
	return 0;
}

struct xattr_load_ctx {
	const struct cfs_image *img;
	struct dnode *node;
};

static bool has_prefix(const char *s, const char *prefix)
{
	return strncmp(s, prefix, strlen(prefix)) == 0;
}

static int load_xattr_cb(void *userdata, uint8_t index, const char *suffix, size_t suffix_len,
			 const uint8_t *value, size_t value_len)
{
	struct xattr_load_ctx *c = userdata;
	struct dnode *n = c->node;
	const char *prefix = cfs_img_xattr_prefix(index);
	size_t plen;
	char *name;

	if (!prefix)
		return cfs_img_fail(-EFSCORRUPTED, "inode nid %llu: unknown xattr prefix index %u",
				    (unsigned long long)n->nid, index);
	plen = strlen(prefix);
	name = malloc(plen + suffix_len + 1);
	if (!name)
		return -ENOMEM;
	memcpy(name, prefix, plen);
	memcpy(name + plen, suffix, suffix_len);
	name[plen + suffix_len] = '\0'; /* an embedded NUL shortens it, as upstream */

	if (strcmp(name, CFS_OVL_REDIRECT) == 0) {
		if (S_ISREG(n->mode)) {
			size_t avail = value_len, sz;
			const uint8_t *v = value;
			size_t img_size;
			const uint8_t *base = cfs_img_bytes(c->img, &img_size);
			char *p;

			/* Upstream skips the leading '/' but then grows the
			 * length instead of shrinking it, so the payload runs
			 * on into the two bytes after the value, up to a NUL.
			 * Reproduce that, within the image. */
			if (value_len > 1 && value[0] == '/') {
				size_t left = img_size - (size_t)(value + 1 - base);

				v = value + 1;
				avail = value_len + 1 < left ? value_len + 1 : left;
			}
			sz = strnlen((const char *)v, avail);
			p = malloc(sz + 1);
			if (!p) {
				free(name);
				return -ENOMEM;
			}
			memcpy(p, v, sz);
			p[sz] = '\0';
			free(n->payload);
			n->payload = p;
		}
		free(name);
		return 0;
	}
	if (strcmp(name, CFS_OVL_METACOPY) == 0) {
		if (S_ISREG(n->mode) && value_len == 4 + CFS_DIGEST_SIZE) {
			memcpy(n->digest, value + 4, CFS_DIGEST_SIZE);
			n->digest_set = true;
		}
		free(name);
		return 0;
	}
	if (strcmp(name, CFS_OVL_ESCAPED_PREFIX "whiteout") == 0 && S_ISREG(n->mode)) {
		n->mode = (n->mode & ~(uint32_t)S_IFMT) | S_IFCHR;
		n->rdev = 0;
		n->size = 0;
		free(name);
		return 0;
	}
	if (strcmp(name, CFS_OVL_ESCAPED_PREFIX "whiteouts") == 0 ||
	    strcmp(name, "user.overlay.whiteout") == 0 || strcmp(name, "user.overlay.whiteouts") == 0) {
		free(name);
		return 0;
	}
	if (has_prefix(name, CFS_OVL_PREFIX)) {
		if (!has_prefix(name, CFS_OVL_ESCAPED_PREFIX)) {
			free(name);
			return 0; /* internal to overlayfs */
		}
		/* trusted.overlay.overlay.X -> trusted.overlay.X */
		memmove(name + strlen("trusted."), name + strlen(CFS_OVL_PREFIX),
			strlen(name) - strlen(CFS_OVL_PREFIX) + 1);
	}
	return node_set_xattr(n, name, value, value_len);
}

/* Load everything about one inode except its children.  Returns 1 for a
 * whiteout (0:0 character device), which the caller drops. */
static int load_inode(struct loader *l, const struct cfs_inode *ino, struct dnode *n)
{
	struct xattr_load_ctx xc = { l->img, n };
	int r;

	n->nid = ino->nid;
	n->mode = ino->mode;
	n->nlink = ino->nlink;
	n->uid = ino->uid;
	n->gid = ino->gid;
	n->size = ino->size;
	n->mtime = ino->mtime;
	n->mtime_nsec = ino->mtime_nsec;
	if (S_ISCHR(ino->mode) || S_ISBLK(ino->mode))
		n->rdev = ino->raw_blkaddr;
	if (S_ISCHR(ino->mode) && n->rdev == 0)
		return 1;

	if (S_ISLNK(ino->mode)) {
		char buf[PATH_MAX];
		ssize_t got;

		if (ino->size >= PATH_MAX)
			return cfs_img_fail(-EFSCORRUPTED, "symlink nid %llu: target of %llu bytes",
					    (unsigned long long)ino->nid, (unsigned long long)ino->size);
		got = cfs_img_read(l->img, ino, 0, buf, (size_t)ino->size);
		if (got < 0)
			return (int)got;
		if ((uint64_t)got != ino->size)
			return cfs_img_fail(-EFSCORRUPTED, "symlink nid %llu: short target",
					    (unsigned long long)ino->nid);
		buf[got] = '\0';
		if (buf[0] == '\0') /* upstream refuses an empty target */
			return cfs_img_fail(-EFSCORRUPTED, "symlink nid %llu: empty target",
					    (unsigned long long)ino->nid);
		n->payload = strdup(buf);
		if (!n->payload)
			return -ENOMEM;
		n->size = strlen(buf);
	} else if (S_ISREG(ino->mode) && ino->size != 0 && ino->datalayout != EROFS_INODE_CHUNK_BASED) {
		size_t img_size;
		ssize_t got;

		(void)cfs_img_bytes(l->img, &img_size);
		/* Upstream's dump format cannot hold more inline content. */
		if (ino->size > INLINE_CONTENT_MAX || ino->size > img_size)
			return cfs_img_fail(-EFBIG, "inode nid %llu: %llu bytes of content in the image (a dump holds at most %d)",
					    (unsigned long long)ino->nid, (unsigned long long)ino->size,
					    INLINE_CONTENT_MAX);
		n->content = malloc((size_t)ino->size);
		if (!n->content)
			return -ENOMEM;
		got = cfs_img_read(l->img, ino, 0, n->content, (size_t)ino->size);
		if (got < 0)
			return (int)got;
		if ((uint64_t)got != ino->size)
			return cfs_img_fail(-EFSCORRUPTED, "inode nid %llu: short content",
					    (unsigned long long)ino->nid);
	}

	r = cfs_img_iterate_raw_xattrs(l->img, ino, load_xattr_cb, &xc);
	return r < 0 ? r : 0;
}

static int add_child(struct dnode *parent, struct dnode *child)
{
	if (CFS_GROW(parent->children, parent->cap_children, parent->n_children + 1) < 0)
		return -ENOMEM;
	parent->children[parent->n_children++] = child;
	child->parent = parent;
	return 0;
}

static int cmp_child(const void *a, const void *b)
{
	const struct dnode *x = *(const struct dnode *const *)a, *y = *(const struct dnode *const *)b;

	return strcmp(x->name, y->name);
}

/* Children are kept sorted by name; a duplicate name fails (upstream EEXIST). */
static int sort_children(struct dnode *n)
{
	if (n->n_children < 2)
		return 0;
	qsort(n->children, n->n_children, sizeof(*n->children), cmp_child);
	for (size_t i = 1; i < n->n_children; i++)
		if (strcmp(n->children[i - 1]->name, n->children[i]->name) == 0)
			return cfs_img_fail(-EFSCORRUPTED, "directory nid %llu: duplicate name",
					    (unsigned long long)n->nid);
	return 0;
}

struct one_entry {
	bool got;
	bool dot;             /* raw name is "." or ".." */
	char name[EROFS_NAME_LEN + 1];
	uint64_t nid;
	uint64_t next;
};

static int one_entry_cb(void *userdata, const char *name, size_t namelen, uint64_t nid,
			unsigned dtype, uint64_t next_cookie)
{
	struct one_entry *e = userdata;

	if (namelen > EROFS_NAME_LEN)
		return cfs_img_fail(-EFSCORRUPTED, "name of %zu bytes", namelen);
	e->dot = (namelen == 1 && name[0] == '.') || (namelen == 2 && name[0] == '.' && name[1] == '.');
	memcpy(e->name, name, namelen);
	e->name[namelen] = '\0';
	e->nid = nid;
	e->next = next_cookie;
	e->got = true;
	return 1;
}

struct frame {
	struct dnode *node;
	struct cfs_inode ino;
	uint64_t cookie;
};

static bool filter_has(const char *const *toplevel, const char *name)
{
	for (; *toplevel; toplevel++)
		if (strcmp(*toplevel, name) == 0)
			return true;
	return false;
}

static int load_tree(const struct cfs_image *img, const char *const *toplevel, struct dnode **ret_root)
{
	struct loader l = { .img = img };
	uint64_t budget = cfs_img_dirent_budget(img);
	struct frame *stack = NULL;
	size_t depth = 0, cap = 0;
	struct cfs_inode ino;
	struct dnode *root;
	int r;

	root = calloc(1, sizeof(*root));
	if (!root)
		return -ENOMEM;
	r = cfs_img_read_inode(img, cfs_img_root_nid(img), &ino);
	if (r < 0)
		goto out;
	r = nid_insert(&l, ino.nid, root);
	if (r < 0)
		goto out;
	r = load_inode(&l, &ino, root);
	if (r == 0 && !S_ISDIR(ino.mode))
		r = 1;
	if (r != 0) {
		if (r > 0)
			r = cfs_img_fail(-EFSCORRUPTED, "the root is not a directory");
		goto out;
	}

	r = CFS_GROW(stack, cap, 1);
	if (r < 0)
		goto out;
	stack[depth++] = (struct frame){ root, ino, 0 };

	while (depth > 0) {
		struct frame *f = &stack[depth - 1];
		struct one_entry e = { 0 };
		struct dnode *child, *existing;
		struct cfs_inode cino;

		r = cfs_img_iterate_dir_raw(img, &f->ino, f->cookie, one_entry_cb, &e);
		if (r < 0)
			goto out;
		if (!e.got) {
			r = sort_children(f->node);
			if (r < 0)
				goto out;
			depth--;
			continue;
		}
		if (budget-- == 0) {
			r = cfs_img_fail(-EFSCORRUPTED,
					 "more directory entries than the image can hold: directories share data");
			goto out;
		}
		f->cookie = e.next;
		if (e.dot)
			continue;
		if (depth == 1 && toplevel && !filter_has(toplevel, e.name))
			continue;
		if (e.name[0] == '\0') {
			r = cfs_img_fail(-EFSCORRUPTED, "directory nid %llu: a name starts with NUL",
					 (unsigned long long)f->ino.nid);
			goto out;
		}

		child = calloc(1, sizeof(*child));
		if (!child) {
			r = -ENOMEM;
			goto out;
		}
		child->name = strdup(e.name);
		if (!child->name) {
			free(child);
			r = -ENOMEM;
			goto out;
		}
		existing = nid_find(&l, e.nid);
		if (existing) {
			child->link_to = existing;
			r = add_child(f->node, child);
			if (r < 0) {
				dnode_free(child);
				goto out;
			}
			continue;
		}
		r = cfs_img_read_inode(img, e.nid, &cino);
		if (r >= 0)
			r = load_inode(&l, &cino, child);
		if (r != 0) {
			dnode_free(child);
			if (r > 0)
				continue; /* a whiteout: not part of the tree */
			goto out;
		}
		r = nid_insert(&l, e.nid, child);
		if (r >= 0)
			r = add_child(f->node, child);
		if (r < 0) {
			dnode_free(child);
			goto out;
		}
		if (S_ISDIR(cino.mode)) {
			r = CFS_GROW(stack, cap, depth + 1);
			if (r < 0)
				goto out;
			stack[depth++] = (struct frame){ child, cino, 0 };
		}
	}
	r = 0;
out:
	free(stack);
	free(l.slots);
	if (r < 0) {
		dnode_free(root);
		return r;
	}
	*ret_root = root;
	return 0;
}

/* ------------------------------------------------------------------ */
/* Printing                                                             */

enum {
	ESC_STANDARD = 0,
	ESC_NO_SPACE = 1 << 0,   /* keep spaces (ls) */
	ESC_EQUAL = 1 << 1,      /* escape '=' (xattrs) */
	ESC_LONE_DASH = 1 << 2,  /* a lone "-" would read as "unset" */
};

static void print_escaped(FILE *out, const char *s, size_t len, int flags)
{
	if ((flags & ESC_LONE_DASH) && len == 1 && s[0] == '-') {
		fputs("\\x2d", out);
		return;
	}
	for (size_t i = 0; i < len; i++) {
		unsigned char c = (unsigned char)s[i];
		bool hex;

		switch (c) {
		case '\\':
			fputs("\\\\", out);
			continue;
		case '\n':
			fputs("\\n", out);
			continue;
		case '\r':
			fputs("\\r", out);
			continue;
		case '\t':
			fputs("\\t", out);
			continue;
		case '=':
			hex = flags & ESC_EQUAL;
			break;
		default:
			/* C locale isprint() / isgraph() */
			hex = (flags & ESC_NO_SPACE) ? (c < 0x20 || c > 0x7e) : (c <= 0x20 || c > 0x7e);
			break;
		}
		if (hex)
			fprintf(out, "\\x%.2x", c);
		else
			fputc(c, out);
	}
}

static void print_str(FILE *out, const char *s, int flags)
{
	print_escaped(out, s, strlen(s), flags);
}

/* Path of a node from the root ("" for the root itself), as upstream's
 * node_build_path(). */
static char *node_path(const struct dnode *n)
{
	size_t len = 0;
	char *p, *end;

	for (const struct dnode *m = n; m; m = m->parent) {
		if (m != n)
			len++;
		if (m->name)
			len += strlen(m->name);
	}
	p = malloc(len + 1);
	if (!p)
		return NULL;
	end = p + len;
	*end = '\0';
	for (const struct dnode *m = n; m; m = m->parent) {
		if (m != n)
			*--end = '/';
		if (m->name) {
			size_t l = strlen(m->name);

			end -= l;
			memcpy(end, m->name, l);
		}
	}
	return p;
}

static int print_dump_line(FILE *out, const struct dnode *n, const char *path)
{
	const struct dnode *t = n->link_to ? n->link_to : n;
	_cleanup_free_ char *link_path = NULL;

	if (n->link_to) {
		link_path = node_path(t);
		if (!link_path)
			return -ENOMEM;
	}
	print_str(out, *path ? path : "/", ESC_STANDARD);
	fprintf(out, " %" PRIu64 " %s%o %u %u %u %" PRIu64 " %" PRIi64 ".%u ", t->size,
		link_path ? "@" : "", t->mode, t->nlink, t->uid, t->gid, t->rdev, t->mtime,
		t->mtime_nsec);
	if (link_path || t->payload)
		print_str(out, link_path ? link_path : t->payload, ESC_LONE_DASH);
	else
		fputc('-', out);
	fputc(' ', out);
	if (t->content)
		print_escaped(out, (const char *)t->content, (size_t)t->size, ESC_LONE_DASH);
	else
		fputc('-', out);
	if (t->digest_set) {
		char hex[2 * CFS_DIGEST_SIZE + 1];

		cfs_digest_to_hex(t->digest, hex);
		fprintf(out, " %s", hex);
	} else {
		fputs(" -", out);
	}
	for (size_t i = 0; i < t->n_xattrs; i++) {
		fputc(' ', out);
		print_str(out, t->xattrs[i].name, ESC_EQUAL);
		fputc('=', out);
		print_escaped(out, (const char *)t->xattrs[i].value, t->xattrs[i].len, ESC_EQUAL);
	}
	fputc('\n', out);
	return 0;
}

static void print_ls_line(FILE *out, const struct dnode *n, const char *path)
{
	/* A hard link entry has no attributes of its own upstream: only its
	 * path is printed. */
	uint32_t type = n->link_to ? 0 : n->mode & S_IFMT;

	print_str(out, path, ESC_NO_SPACE);
	if (type == S_IFDIR) {
		fputs("/\t", out);
	} else if (type == S_IFLNK) {
		fputs("\t-> ", out);
		print_str(out, n->payload, ESC_STANDARD);
	} else if (type == S_IFREG && n->payload) {
		fputs("\t@ ", out);
		print_str(out, n->payload, ESC_STANDARD);
	}
	fputc('\n', out);
}

/* Pre-order walk with a growing path buffer.  @fn gets each node but the
 * root (which the dump prints itself). */
struct walk_frame {
	const struct dnode *node;
	size_t next_child;
	size_t path_len;
};

typedef int (*walk_fn)(void *userdata, const struct dnode *n, const char *path);

static int walk(const struct dnode *root, walk_fn fn, void *userdata)
{
	struct walk_frame *stack = NULL;
	size_t depth = 0, cap = 0, path_cap = 0;
	char *path = NULL;
	int r;

	r = CFS_GROW(stack, cap, 1);
	if (r < 0)
		goto out;
	stack[depth++] = (struct walk_frame){ root, 0, 0 };

	while (depth > 0) {
		struct walk_frame *f = &stack[depth - 1];
		const struct dnode *c;
		size_t nl, len;

		if (f->next_child >= f->node->n_children) {
			depth--;
			continue;
		}
		c = f->node->children[f->next_child++];
		nl = strlen(c->name);
		len = f->path_len + 1 + nl;
		/* (an allocation failure used to return the last fn() result) */
		r = cfs_path_append(&path, &path_cap, f->path_len, c->name, nl);
		if (r < 0)
			goto out;

		r = fn(userdata, c, path);
		if (r < 0)
			goto out;
		if (c->n_children) {
			r = CFS_GROW(stack, cap, depth + 1);
			if (r < 0)
				goto out;
			stack[depth++] = (struct walk_frame){ c, 0, len };
		}
	}
	r = 0;
out:
	free(stack);
	free(path);
	return r;
}

static int dump_cb(void *userdata, const struct dnode *n, const char *path)
{
	return print_dump_line(userdata, n, path);
}

static int ls_cb(void *userdata, const struct dnode *n, const char *path)
{
	print_ls_line(userdata, n, path);
	return 0;
}

int cfs_img_print_listing(const struct cfs_image *img, enum cfs_img_listing what,
			  const char *const *toplevel, FILE *out)
{
	struct dnode *root = NULL;
	int r;

	r = load_tree(img, toplevel, &root);
	if (r < 0)
		return r;
	switch (what) {
	case CFS_IMG_LIST_DUMP:
		r = print_dump_line(out, root, "");
		if (r >= 0)
			r = walk(root, dump_cb, out);
		break;
	case CFS_IMG_LIST_LS:
		r = walk(root, ls_cb, out);
		break;
	default:
		r = -EINVAL;
	}
	dnode_free(root);
	if (r >= 0 && ferror(out))
		r = -EIO;
	return r;
}

int cfs_img_print_dump(const struct cfs_image *img, FILE *out)
{
	return cfs_img_print_listing(img, CFS_IMG_LIST_DUMP, NULL, out);
}

struct objects_ctx {
	cfs_object_fn fn;
	void *userdata;
};

static int object_node(struct objects_ctx *c, const struct dnode *n)
{
	if (n->link_to || !S_ISREG(n->mode) || !n->payload)
		return 0;
	return c->fn(c->userdata, n->payload);
}

static int objects_cb(void *userdata, const struct dnode *n, const char *path)
{
	int r = object_node(userdata, n);

	return r > 0 ? -ECANCELED : r;
}

int cfs_img_list_objects(const struct cfs_image *img, const char *const *toplevel,
			 cfs_object_fn fn, void *userdata)
{
	struct objects_ctx c = { fn, userdata };
	struct dnode *root = NULL;
	int r;

	r = load_tree(img, toplevel, &root);
	if (r < 0)
		return r;
	r = object_node(&c, root);
	if (r == 0)
		r = walk(root, objects_cb, &c);
	dnode_free(root);
	return r == -ECANCELED ? 1 : r;
}
