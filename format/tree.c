/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * The in-memory tree the writer serialises: nodes, sorted children, xattrs
 * with upstream's size budget (indexed by name), the table of hard-linked
 * inodes the loaders share, and the walk the printers use.
 */
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "erofs-disk.h"
#include "image-internal.h"
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
	free(node->xattr_slots);
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

/* The checks of cfs_node_add_child() but the duplicate one; a copy of
 * @name in *ret_dup and room for one more child. */
static int child_prepare(struct cfs_node *parent, struct cfs_node *child, const char *name,
			 char **ret_dup)
{
	size_t len;

	if (!cfs_node_is_dir(parent))
		return -ENOTDIR;
	len = strlen(name);
	if (len == 0)
		return -EINVAL;
	if (len > EROFS_NAME_LEN)
		return -ENAMETOOLONG;
	if (child->name || child->parent)
		return -EMLINK;
	if (CFS_GROW(parent->children, parent->children_cap, parent->n_children + 1) < 0)
		return -ENOMEM;
	*ret_dup = strdup(name);
	return *ret_dup ? 0 : -ENOMEM;
}

static void child_insert(struct cfs_node *parent, struct cfs_node *child, char *name, size_t pos)
{
	memmove(parent->children + pos + 1, parent->children + pos,
		(parent->n_children - pos) * sizeof(*parent->children));
	parent->children[pos] = child;
	parent->n_children++;
	child->parent = parent;
	child->name = name;
}

int cfs_node_add_child(struct cfs_node *parent, struct cfs_node *child, const char *name)
{
	size_t pos;
	char *dup;
	int r;

	r = child_prepare(parent, child, name, &dup);
	if (r < 0)
		return r;
	if (bsearch_child(parent, name, &pos)) {
		free(dup);
		return -EEXIST;
	}
	child_insert(parent, child, dup, pos);
	return 0;
}

int cfs_node_append_child(struct cfs_node *parent, struct cfs_node *child, const char *name)
{
	char *dup;
	int r = child_prepare(parent, child, name, &dup);

	if (r < 0)
		return r;
	child_insert(parent, child, dup, parent->n_children);
	return 0;
}

static int cmp_child(const void *a, const void *b)
{
	const struct cfs_node *x = *(const struct cfs_node *const *)a;
	const struct cfs_node *y = *(const struct cfs_node *const *)b;

	return strcmp(x->name, y->name);
}

int cfs_node_sort_children(struct cfs_node *node)
{
	if (node->n_children < 2)
		return 0;
	qsort(node->children, node->n_children, sizeof(*node->children), cmp_child);
	for (size_t i = 1; i < node->n_children; i++)
		if (strcmp(node->children[i - 1]->name, node->children[i]->name) == 0)
			return -EEXIST;
	return 0;
}

struct cfs_node *cfs_node_new_link(struct cfs_node *target)
{
	struct cfs_node *link = cfs_node_new();

	if (link) {
		link->mode = target->mode;
		link->link_to = target;
	}
	return link;
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

/* ---- xattrs ---------------------------------------------------------------- */

/* A node's xattrs by name: open addressing over node->xattr_slots, whose
 * values are an index into node->xattrs plus one, XSLOT_EMPTY or XSLOT_GONE
 * (a removed name).  Built once a node has XATTR_INDEX_MIN xattrs: a hostile
 * image may give one inode thousands, and a linear search per xattr would
 * make loading it quadratic.  An index that cannot be allocated is dropped
 * (lookups fall back to the linear search). */
#define XSLOT_EMPTY 0
#define XSLOT_GONE UINT32_MAX
#define XATTR_INDEX_MIN 8

static size_t xname_hash(const char *s)
{
	uint64_t h = UINT64_C(0xcbf29ce484222325); /* FNV-1a */

	for (; *s; s++)
		h = (h ^ (uint8_t)*s) * UINT64_C(0x100000001b3);
	return (size_t)(h ^ (h >> 32));
}

/* The slot holding @key, or the empty slot where its probe ends. */
static size_t xslot_find(const struct cfs_node *node, const char *key)
{
	size_t mask = node->n_xattr_slots - 1;

	for (size_t i = xname_hash(key) & mask;; i = (i + 1) & mask) {
		uint32_t v = node->xattr_slots[i];

		if (v == XSLOT_EMPTY)
			return i;
		if (v != XSLOT_GONE && strcmp(node->xattrs[v - 1].key, key) == 0)
			return i;
	}
}

void cfs_node_xattrs_changed(struct cfs_node *node)
{
	free(node->xattr_slots);
	node->xattr_slots = NULL;
	node->n_xattr_slots = node->used_xattr_slots = 0;
}

/* (Re)build the index with at least three quarters of its slots empty. */
static void xindex_build(struct cfs_node *node)
{
	size_t want = 16;

	cfs_node_xattrs_changed(node);
	while (want < (node->n_xattrs + 1) * 4)
		want *= 2;
	node->xattr_slots = calloc(want, sizeof(*node->xattr_slots));
	if (!node->xattr_slots)
		return;
	node->n_xattr_slots = want;
	for (size_t i = 0; i < node->n_xattrs; i++)
		node->xattr_slots[xslot_find(node, node->xattrs[i].key)] = (uint32_t)i + 1;
	node->used_xattr_slots = node->n_xattrs;
}

/* Index the xattr just appended (the last one). */
static void xindex_add(struct cfs_node *node)
{
	size_t i = node->n_xattrs - 1;

	if (!node->xattr_slots && node->n_xattrs < XATTR_INDEX_MIN)
		return;
	/* Keep at least half of the slots empty (removed ones count as used). */
	if (!node->xattr_slots || (node->used_xattr_slots + 1) * 2 > node->n_xattr_slots) {
		xindex_build(node);
		return;
	}
	node->xattr_slots[xslot_find(node, node->xattrs[i].key)] = (uint32_t)i + 1;
	node->used_xattr_slots++;
}

static ssize_t find_xattr(const struct cfs_node *node, const char *key)
{
	if (node->xattr_slots) {
		uint32_t v = node->xattr_slots[xslot_find(node, key)];

		return v == XSLOT_EMPTY ? -1 : (ssize_t)v - 1;
	}
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
	size_t cost, last = node->n_xattrs - 1;

	if (i < 0)
		return -ENODATA;
	cost = 2 * CFS_XATTR_ENTRY_COST - 1 + strlen(key) + node->xattrs[i].value_len;
	if (node->xattr_slots) {
		node->xattr_slots[xslot_find(node, key)] = XSLOT_GONE;
		if ((size_t)i != last)
			node->xattr_slots[xslot_find(node, node->xattrs[last].key)] = (uint32_t)i + 1;
	}
	free(node->xattrs[i].key);
	free(node->xattrs[i].value);
	/* The last entry moves into the freed place, as upstream's does. */
	node->xattrs[i] = node->xattrs[last];
	node->n_xattrs--;
	/* Same bookkeeping as upstream, including its unsigned wrap-around:
	 * the ibody header is only given back with the last xattr. */
	if (node->n_xattrs == 0)
		node->xattr_budget = 0;
	else
		node->xattr_budget -= cost;
	return 0;
}

int cfs_node_set_xattr_limit(struct cfs_node *node, const char *key, const void *value,
			     size_t len, size_t limit)
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
	if (node->xattr_budget + cost > limit)
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
	xindex_add(node);
	return 0;
}

int cfs_node_set_xattr(struct cfs_node *node, const char *key, const void *value, size_t len)
{
	return cfs_node_set_xattr_limit(node, key, value, len, CFS_XATTR_EXTERNAL_MAX);
}

/* ---- the table of hard-linked inodes ------------------------------------- */

static size_t table_hash(uint64_t a, uint64_t b, size_t n)
{
	uint64_t h = b * UINT64_C(0x9E3779B97F4A7C15) ^ a * UINT64_C(0xC2B2AE3D27D4EB4F);

	return (size_t)(h ^ (h >> 29)) & (n - 1);
}

struct cfs_node *cfs_node_table_find(const struct cfs_node_table *t, uint64_t a, uint64_t b)
{
	if (!t->n_slots)
		return NULL;
	for (size_t j = table_hash(a, b, t->n_slots);; j = (j + 1) & (t->n_slots - 1)) {
		if (!t->slots[j].node)
			return NULL;
		if (t->slots[j].a == a && t->slots[j].b == b)
			return t->slots[j].node;
	}
}

static void table_put(struct cfs_node_table_slot *slots, size_t n, struct cfs_node_table_slot s)
{
	size_t j = table_hash(s.a, s.b, n);

	while (slots[j].node)
		j = (j + 1) & (n - 1);
	slots[j] = s;
}

int cfs_node_table_add(struct cfs_node_table *t, uint64_t a, uint64_t b, struct cfs_node *node)
{
	if ((t->n_used + 1) * 2 > t->n_slots) {
		size_t n = t->n_slots ? t->n_slots * 2 : 256;
		struct cfs_node_table_slot *slots = calloc(n, sizeof(*slots));

		if (!slots)
			return -ENOMEM;
		for (size_t i = 0; i < t->n_slots; i++)
			if (t->slots[i].node)
				table_put(slots, n, t->slots[i]);
		free(t->slots);
		t->slots = slots;
		t->n_slots = n;
	}
	table_put(t->slots, t->n_slots, (struct cfs_node_table_slot){ a, b, node });
	t->n_used++;
	return 0;
}

void cfs_node_table_clear(struct cfs_node_table *t)
{
	free(t->slots);
	*t = (struct cfs_node_table){ 0 };
}

/* ---- walking ---------------------------------------------------------------- */

struct walk_frame {
	struct cfs_node *node;
	size_t next_child;
	size_t path_len;
};

int cfs_node_walk(struct cfs_node *root, cfs_node_walk_fn fn, void *userdata)
{
	_cleanup_free_ struct walk_frame *stack = NULL;
	_cleanup_free_ char *path = NULL;
	size_t depth = 0, cap = 0, path_cap = 0;
	int r;

	r = CFS_GROW(stack, cap, 1);
	if (r < 0)
		return r;
	stack[depth++] = (struct walk_frame){ root, 0, 0 };
	while (depth > 0) {
		struct walk_frame *f = &stack[depth - 1];
		struct cfs_node *c;
		size_t nl;

		if (f->next_child >= f->node->n_children) {
			depth--;
			continue;
		}
		c = f->node->children[f->next_child++];
		nl = strlen(c->name);
		r = cfs_path_append(&path, &path_cap, f->path_len, c->name, nl);
		if (r < 0)
			return r;
		r = fn(userdata, c, path);
		if (r != 0)
			return r;
		if (c->n_children) {
			size_t len = f->path_len + 1 + nl;

			r = CFS_GROW(stack, cap, depth + 1);
			if (r < 0)
				return r;
			stack[depth++] = (struct walk_frame){ c, 0, len };
		}
	}
	return 0;
}
