/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * libFuzzer target for the daemon's request handlers: the input is an image
 * served by the real handlers (daemon/ops.c, files.c) over a libfuse session
 * whose /dev/fuse is replaced by fuse_session_custom_io(), with no kernel and
 * no mount.  Each input gets a fresh session and store handle; the harness
 * plays the kernel: INIT, then a walk of the tree through READDIRPLUS and
 * LOOKUP, and on every inode it finds GETATTR, READLINK, LISTXATTR and
 * GETXATTR of each name, READ at several offsets, LSEEK, OPEN/RELEASE and
 * writes, then requests for inode numbers that do not exist, FORGETs and
 * DESTROY.
 *
 * The store is made once per process from objects generated here
 * (object_byte()); fuzz/corpus/daemon/ holds images that point at them, made
 * by fuzz/daemon-seeds.py from the same generator.
 *
 * Checked on every reply: exactly one reply per request with its unique,
 * an error in range, a payload of the size the protocol says.  Checked on
 * every byte of file data that leaves the daemon (READ replies and
 * notify_store pushes): with verification on and a digest in the image,
 * the data is the object with that digest, at that offset, and nothing
 * else.  The last byte of the input picks the daemon's options.
 */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/fuse.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cfsd.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerInitialize(int *argc, char ***argv);

#define FUZZ_CHECK(cond)                                                               \
	do {                                                                           \
		if (!(cond)) {                                                         \
			fprintf(stderr, "fuzz-daemon: check failed at line %d: %s\n", \
				__LINE__, #cond);                                      \
			abort();                                                       \
		}                                                                      \
	} while (0)

/* ------------------------------------------------------------ the store */

/* Object sizes: inline-sized, one block, one block and a byte, many blocks,
 * beyond the 128 KiB below which trees are not kept, and one beyond the
 * 16 MiB up to which a verified whole copy is kept (the per-block path).
 * The last is stored tampered: one byte differs from what its name (its
 * digest) says, so none of it may be served. */
static const size_t object_sizes[] = { 1, 100, 4096, 4097, 65541, 200000, (16u << 20) + 12345, 70000 };
#define TAMPERED_OBJECT 7
#define TAMPERED_OFFSET 50000
#define N_OBJECTS (sizeof(object_sizes) / sizeof(object_sizes[0]))

static struct {
	uint8_t *data;
	size_t size;
	uint8_t digest[CFS_DIGEST_SIZE];
} objects[N_OBJECTS];
static char store_dir[] = "/tmp/cfs-fuzz-daemon-XXXXXX";
static bool store_made;

/* Byte @i of object @k (fuzz/daemon-seeds.py writes the same). */
static uint8_t object_byte(size_t k, size_t i)
{
	return (uint8_t)(i * 131 + k * 29 + (i >> 12) * 7);
}

static void remove_store(void)
{
	char cmd[sizeof(store_dir) + 16];

	snprintf(cmd, sizeof(cmd), "rm -rf %s", store_dir);
	if (system(cmd) != 0)
		fprintf(stderr, "fuzz-daemon: could not remove %s\n", store_dir);
}

static void make_store(void)
{
	if (store_made)
		return;
	store_made = true;
	FUZZ_CHECK(mkdtemp(store_dir) != NULL);
	atexit(remove_store);
	for (size_t k = 0; k < N_OBJECTS; k++) {
		char hex[2 * CFS_DIGEST_SIZE + 1], path[sizeof(store_dir) + 2 * CFS_DIGEST_SIZE + 8];
		size_t n = object_sizes[k];
		uint8_t *p = malloc(n);
		int fd;

		FUZZ_CHECK(p != NULL);
		for (size_t i = 0; i < n; i++)
			p[i] = object_byte(k, i);
		FUZZ_CHECK(cfs_fsverity_digest_mem(p, n, objects[k].digest) == 0);
		objects[k].data = p;
		objects[k].size = n;
		cfs_digest_to_hex(objects[k].digest, hex);
		snprintf(path, sizeof(path), "%s/%.2s", store_dir, hex);
		(void)mkdir(path, 0755);
		snprintf(path, sizeof(path), "%s/%.2s/%s", store_dir, hex, hex + 2);
		fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
		FUZZ_CHECK(fd >= 0);
		if (k == TAMPERED_OBJECT)
			p[TAMPERED_OFFSET] ^= 1;
		FUZZ_CHECK(write(fd, p, n) == (ssize_t)n);
		if (k == TAMPERED_OBJECT)
			p[TAMPERED_OFFSET] ^= 1; /* what a reader may see: the true bytes */
		close(fd);
	}
}

/* ------------------------------------------------------ the fake kernel */

struct harness {
	struct cfsd d;
	uint64_t unique;
	/* The reply to the request in flight, and how many came. */
	uint8_t *reply;
	size_t reply_len, reply_cap;
	unsigned replies;
	uint64_t want_unique;
	unsigned budget;      /* requests left for this input */
	bool check_data;      /* verification on: check served bytes */
};

static struct harness *H;
static uint64_t checked_bytes; /* served bytes compared with their object */

static void report(void)
{
	fprintf(stderr, "fuzz-daemon: %llu served bytes checked against their objects\n",
		(unsigned long long)checked_bytes);
}

/* The object @ino's data must be, if a digest vouches for it; NULL when the
 * harness cannot tell (no digest, verification off, not external). */
static bool expected_object(struct harness *h, uint64_t ino, size_t *ret_k, bool *ret_checkable)
{
	struct cfs_inode ci;
	struct cfs_backing b;
	uint64_t nid;

	*ret_checkable = false;
	if (!h->check_data || cfsd_ino_to_nid(h->d.info.root_nid, ino, &nid) < 0 ||
	    cfs_img_read_inode(h->d.img, nid, &ci) < 0 || !S_ISREG(ci.mode) ||
	    cfs_img_get_backing(h->d.img, &ci, &b) < 0 || !b.is_external || !b.has_digest)
		return false;
	*ret_checkable = true;
	for (size_t k = 0; k < N_OBJECTS; k++) {
		if (!memcmp(objects[k].digest, b.digest, CFS_DIGEST_SIZE)) {
			/* The image's size must be the object's too, or the
			 * daemon refuses it. */
			if (ci.size != objects[k].size)
				return false;
			*ret_k = k;
			return true;
		}
	}
	return false; /* no such object: nothing may be served */
}

/* Bytes of file @ino at @off that left the daemon. */
static void check_file_data(struct harness *h, uint64_t ino, uint64_t off, const uint8_t *p, size_t n)
{
	bool checkable;
	size_t k;

	if (!expected_object(h, ino, &k, &checkable)) {
		FUZZ_CHECK(!checkable || n == 0);
		return;
	}
	if (n == 0)
		return; /* at or past the end */
	FUZZ_CHECK(off < objects[k].size && n <= objects[k].size - off);
	FUZZ_CHECK(!memcmp(p, objects[k].data + off, n));
	checked_bytes += n;
}

static void gather(struct harness *h, const struct iovec *iov, int count)
{
	size_t len = 0;

	for (int i = 0; i < count; i++)
		len += iov[i].iov_len;
	if (len > h->reply_cap) {
		h->reply = realloc(h->reply, len);
		FUZZ_CHECK(h->reply != NULL);
		h->reply_cap = len;
	}
	h->reply_len = 0;
	for (int i = 0; i < count; i++) {
		memcpy(h->reply + h->reply_len, iov[i].iov_base, iov[i].iov_len);
		h->reply_len += iov[i].iov_len;
	}
}

static ssize_t fake_writev(int fd, struct iovec *iov, int count, void *userdata)
{
	struct harness *h = H;
	const struct fuse_out_header *oh;
	size_t len = 0;

	(void)fd;
	(void)userdata;
	for (int i = 0; i < count; i++)
		len += iov[i].iov_len;
	FUZZ_CHECK(count >= 1 && iov[0].iov_len >= sizeof(*oh));
	oh = iov[0].iov_base;
	FUZZ_CHECK(oh->len == len);
	if (oh->unique == 0) {
		/* A notification: only notify_store, with verified data. */
		const struct fuse_notify_store_out *so;

		FUZZ_CHECK(oh->error == FUSE_NOTIFY_STORE);
		gather(h, iov, count);
		FUZZ_CHECK(h->reply_len >= sizeof(*oh) + sizeof(*so));
		so = (const void *)(h->reply + sizeof(*oh));
		FUZZ_CHECK(so->size == h->reply_len - sizeof(*oh) - sizeof(*so));
		check_file_data(h, so->nodeid, so->offset, h->reply + sizeof(*oh) + sizeof(*so), so->size);
		h->reply_len = 0;
		return (ssize_t)len;
	}
	FUZZ_CHECK(oh->unique == h->want_unique);
	FUZZ_CHECK(oh->error <= 0 && oh->error > -4096);
	FUZZ_CHECK(oh->error == 0 || len == sizeof(*oh));
	h->replies++;
	gather(h, iov, count);
	return (ssize_t)len;
}

static ssize_t fake_read(int fd, void *buf, size_t len, void *userdata)
{
	(void)fd;
	(void)buf;
	(void)len;
	(void)userdata;
	errno = ENODEV; /* never called: requests come through process_buf */
	return -1;
}

static const struct fuse_custom_io fake_io = { .writev = fake_writev, .read = fake_read };

/* Send one request (@arg: its body, @arglen bytes, then @tail); returns the
 * reply's error (0 or -errno), -ECANCELED when the budget is spent.  The
 * reply payload is h->reply + sizeof(fuse_out_header). */
static int request(struct harness *h, uint32_t opcode, uint64_t nodeid, const void *arg, size_t arglen,
		   const void *tail, size_t taillen, bool expect_reply)
{
	struct fuse_in_header *ih;
	struct fuse_buf fbuf = { 0 };
	size_t len = sizeof(*ih) + arglen + taillen;
	uint8_t *buf;

	if (h->budget == 0)
		return -ECANCELED;
	h->budget--;
	buf = calloc(1, len);
	FUZZ_CHECK(buf != NULL);
	ih = (void *)buf;
	ih->len = (uint32_t)len;
	ih->opcode = opcode;
	ih->unique = ++h->unique;
	ih->nodeid = nodeid;
	ih->uid = 1000;
	ih->gid = 1000;
	ih->pid = 4242;
	if (arglen)
		memcpy(buf + sizeof(*ih), arg, arglen);
	if (taillen)
		memcpy(buf + sizeof(*ih) + arglen, tail, taillen);
	h->want_unique = ih->unique;
	h->replies = 0;
	h->reply_len = 0;
	fbuf.mem = buf;
	fbuf.size = len;
	fuse_session_process_buf(h->d.se, &fbuf);
	free(buf);
	FUZZ_CHECK(h->replies == (expect_reply ? 1u : 0u));
	if (!expect_reply)
		return 0;
	return ((const struct fuse_out_header *)h->reply)->error;
}

static const uint8_t *payload(struct harness *h, size_t *ret_len)
{
	*ret_len = h->reply_len - sizeof(struct fuse_out_header);
	return h->reply + sizeof(struct fuse_out_header);
}

/* ------------------------------------------------------------ the walk */

#define MAX_NODES 512

struct node {
	uint64_t ino;
	uint32_t mode;
	uint64_t size;
	uint64_t lookups;
};

struct walk {
	struct node nodes[MAX_NODES];
	size_t n;
};

static struct node *add_node(struct walk *w, uint64_t ino, uint32_t mode, uint64_t size)
{
	for (size_t i = 0; i < w->n; i++)
		if (w->nodes[i].ino == ino) {
			w->nodes[i].lookups++;
			return NULL; /* seen: a hard link or a loop */
		}
	if (w->n == MAX_NODES)
		return NULL;
	w->nodes[w->n] = (struct node){ .ino = ino, .mode = mode, .size = size, .lookups = 1 };
	return &w->nodes[w->n++];
}

static void check_attr(const struct fuse_attr *a, uint64_t ino)
{
	FUZZ_CHECK(a->ino == ino);
	FUZZ_CHECK(a->mode != 0);
}

static void do_lookup(struct harness *h, struct walk *w, uint64_t parent, const char *name, size_t namelen)
{
	char nbuf[300];
	size_t n;
	const struct fuse_entry_out *e;
	int r;

	if (namelen >= sizeof(nbuf))
		return;
	memcpy(nbuf, name, namelen);
	nbuf[namelen] = '\0';
	r = request(h, FUSE_LOOKUP, parent, nbuf, namelen + 1, NULL, 0, true);
	if (r != 0)
		return;
	e = (const void *)payload(h, &n);
	FUZZ_CHECK(n == sizeof(*e));
	if (e->nodeid == 0)
		return; /* a negative entry */
	check_attr(&e->attr, e->nodeid);
	(void)add_node(w, e->nodeid, e->attr.mode, e->attr.size);
}

static void do_readdir(struct harness *h, struct walk *w, uint64_t ino, uint32_t opcode, uint32_t size)
{
	uint8_t copy[4096];
	uint64_t off = 0;

	FUZZ_CHECK(size <= sizeof(copy));
	for (unsigned rounds = 0; rounds < 64; rounds++) {
		struct fuse_read_in in = { .offset = off, .size = size };
		const uint8_t *p;
		size_t n, pos = 0;
		uint64_t last = off;
		int r = request(h, opcode, ino, &in, sizeof(in), NULL, 0, true);

		if (r != 0)
			return;
		/* Copied: the lookups below reuse the reply buffer. */
		p = payload(h, &n);
		FUZZ_CHECK(n <= size);
		if (n == 0)
			return;
		memcpy(copy, p, n);
		p = copy;
		while (pos < n) {
			const struct fuse_dirent *de;
			size_t reclen;

			if (opcode == FUSE_READDIRPLUS) {
				const struct fuse_direntplus *dp = (const void *)(p + pos);

				FUZZ_CHECK(n - pos >= sizeof(*dp));
				de = &dp->dirent;
				reclen = FUSE_DIRENTPLUS_SIZE(dp);
				FUZZ_CHECK(de->namelen > 0 && de->namelen <= 255 && n - pos >= reclen);
				if (dp->entry_out.nodeid) {
					check_attr(&dp->entry_out.attr, dp->entry_out.nodeid);
					(void)add_node(w, dp->entry_out.nodeid, dp->entry_out.attr.mode,
						       dp->entry_out.attr.size);
				}
			} else {
				de = (const void *)(p + pos);
				FUZZ_CHECK(n - pos >= FUSE_NAME_OFFSET);
				reclen = FUSE_DIRENT_SIZE(de);
				FUZZ_CHECK(de->namelen > 0 && de->namelen <= 255 && n - pos >= reclen);
				if (!(de->namelen <= 2 && de->name[0] == '.' &&
				      (de->namelen == 1 || de->name[1] == '.')))
					do_lookup(h, w, ino, de->name, de->namelen);
			}
			FUZZ_CHECK(de->off != 0);
			last = de->off;
			pos += reclen;
		}
		if (last == off)
			return; /* no progress */
		off = last;
	}
}

static void do_xattrs(struct harness *h, uint64_t ino)
{
	struct fuse_getxattr_in in = { .size = 0 };
	const struct fuse_getxattr_out *go;
	const uint8_t *p;
	size_t n;
	uint32_t want;
	char *names;
	int r;

	r = request(h, FUSE_LISTXATTR, ino, &in, sizeof(in), NULL, 0, true);
	if (r != 0)
		return;
	go = (const void *)payload(h, &n);
	FUZZ_CHECK(n == sizeof(*go));
	want = go->size;
	FUZZ_CHECK(want <= 65536);
	if (want == 0)
		return;
	in.size = want;
	r = request(h, FUSE_LISTXATTR, ino, &in, sizeof(in), NULL, 0, true);
	if (r != 0)
		return;
	p = payload(h, &n);
	FUZZ_CHECK(n <= want && (n == 0 || p[n - 1] == '\0'));
	names = malloc(n + 1);
	FUZZ_CHECK(names != NULL);
	memcpy(names, p, n);
	names[n] = '\0';
	/* One byte short of the list: ERANGE. */
	in.size = (uint32_t)n - 1;
	if (n > 1)
		FUZZ_CHECK(request(h, FUSE_LISTXATTR, ino, &in, sizeof(in), NULL, 0, true) != 0);
	for (size_t pos = 0, total = n; pos < total;) {
		size_t len = strlen(names + pos);
		uint32_t vsize;

		in.size = 0;
		if (request(h, FUSE_GETXATTR, ino, &in, sizeof(in), names + pos, len + 1, true) == 0) {
			go = (const void *)payload(h, &n);
			FUZZ_CHECK(n == sizeof(*go));
			vsize = go->size;
			FUZZ_CHECK(vsize <= 65536);
			in.size = vsize ? vsize : 1;
			if (request(h, FUSE_GETXATTR, ino, &in, sizeof(in), names + pos, len + 1, true) == 0) {
				(void)payload(h, &n);
				FUZZ_CHECK(n == vsize);
			}
			if (vsize > 1) {
				in.size = vsize - 1;
				FUZZ_CHECK(request(h, FUSE_GETXATTR, ino, &in, sizeof(in), names + pos, len + 1,
						   true) != 0);
			}
		}
		pos += len + 1;
	}
	free(names);
}

static void do_read(struct harness *h, uint64_t ino, uint64_t fh, uint64_t off, uint32_t size)
{
	struct fuse_read_in in = { .fh = fh, .offset = off, .size = size, .flags = O_RDONLY };
	const uint8_t *p;
	size_t n;

	if (request(h, FUSE_READ, ino, &in, sizeof(in), NULL, 0, true) != 0)
		return;
	p = payload(h, &n);
	FUZZ_CHECK(n <= size);
	check_file_data(h, ino, off, p, n);
}

static void do_file(struct harness *h, const struct node *nd)
{
	struct fuse_open_in oin = { .flags = O_RDONLY };
	struct fuse_lseek_in lin = { 0 };
	uint64_t fh = 0;
	const struct fuse_open_out *oo;
	size_t n;
	int r;

	/* Writes are refused whatever the mode. */
	oin.flags = O_WRONLY;
	FUZZ_CHECK(request(h, FUSE_OPEN, nd->ino, &oin, sizeof(oin), NULL, 0, true) != 0);
	oin.flags = O_RDONLY;
	r = request(h, FUSE_OPEN, nd->ino, &oin, sizeof(oin), NULL, 0, true);
	if (r == 0) {
		oo = (const void *)payload(h, &n);
		FUZZ_CHECK(n == sizeof(*oo));
		fh = oo->fh;
	}
	do_read(h, nd->ino, fh, 0, 4096);
	do_read(h, nd->ino, fh, 0, 131072);
	if (nd->size > 4096) {
		do_read(h, nd->ino, fh, 4095, 2);
		do_read(h, nd->ino, fh, nd->size / 2 & ~(uint64_t)4095, 131072);
		do_read(h, nd->ino, fh, nd->size - 1, 4096);
	}
	do_read(h, nd->ino, fh, nd->size, 4096);
	do_read(h, nd->ino, fh, nd->size + (1u << 20), 4096);
	lin.fh = fh;
	lin.whence = SEEK_DATA;
	(void)request(h, FUSE_LSEEK, nd->ino, &lin, sizeof(lin), NULL, 0, true);
	lin.whence = SEEK_HOLE;
	lin.offset = nd->size / 3;
	(void)request(h, FUSE_LSEEK, nd->ino, &lin, sizeof(lin), NULL, 0, true);
	if (r == 0) {
		struct fuse_release_in rin = { .fh = fh, .flags = O_RDONLY };
		FUZZ_CHECK(request(h, FUSE_RELEASE, nd->ino, &rin, sizeof(rin), NULL, 0, true) == 0);
	}
}

static void do_node(struct harness *h, struct walk *w, const struct node *nd)
{
	struct fuse_getattr_in gin = { 0 };
	const struct fuse_attr_out *ao;
	size_t n;

	if (request(h, FUSE_GETATTR, nd->ino, &gin, sizeof(gin), NULL, 0, true) == 0) {
		ao = (const void *)payload(h, &n);
		FUZZ_CHECK(n == sizeof(*ao));
		check_attr(&ao->attr, nd->ino);
		FUZZ_CHECK(ao->attr.mode == nd->mode && ao->attr.size == nd->size);
	}
	do_xattrs(h, nd->ino);
	switch (nd->mode & S_IFMT) {
	case S_IFDIR: {
		struct fuse_open_in oin = { .flags = O_RDONLY | O_DIRECTORY };
		(void)request(h, FUSE_OPENDIR, nd->ino, &oin, sizeof(oin), NULL, 0, true);
		do_readdir(h, w, nd->ino, FUSE_READDIRPLUS, 4096);
		do_readdir(h, w, nd->ino, FUSE_READDIR, 512);
		do_lookup(h, w, nd->ino, "no such name", 12);
		do_lookup(h, w, nd->ino, "..", 2);
		break;
	}
	case S_IFLNK:
		if (request(h, FUSE_READLINK, nd->ino, NULL, 0, NULL, 0, true) == 0) {
			(void)payload(h, &n);
			FUZZ_CHECK(n > 0 && n <= 4096);
		}
		break;
	case S_IFREG:
		do_file(h, nd);
		break;
	}
	{
		/* Changes are refused on a read-only filesystem. */
		struct fuse_mkdir_in min = { .mode = 0755 };
		FUZZ_CHECK(request(h, FUSE_MKDIR, nd->ino, &min, sizeof(min), "x", 2, true) != 0);
	}
}

/* Inode numbers the walk did not hand out, from the input. */
static void bogus_inodes(struct harness *h, const uint8_t *data, size_t size)
{
	uint64_t inos[8] = { 0, 2, 3, UINT64_MAX, UINT64_MAX - 1, (uint64_t)1 << 40 };
	struct fuse_getattr_in gin = { 0 };
	struct fuse_read_in rin = { .size = 4096 };

	for (size_t i = 0; i < 2 && size >= 8 * (i + 1); i++)
		memcpy(&inos[6 + i], data + size - 8 * (i + 1), 8);
	for (size_t i = 0; i < 8; i++) {
		(void)request(h, FUSE_GETATTR, inos[i], &gin, sizeof(gin), NULL, 0, true);
		(void)request(h, FUSE_LOOKUP, inos[i], "a", 2, NULL, 0, true);
		(void)request(h, FUSE_READLINK, inos[i], NULL, 0, NULL, 0, true);
		if (request(h, FUSE_READ, inos[i], &rin, sizeof(rin), NULL, 0, true) == 0) {
			size_t n;
			const uint8_t *p = payload(h, &n);
			check_file_data(h, inos[i], 0, p, n);
		}
	}
}

static void init_session(struct harness *h)
{
	struct fuse_init_in in = {
		.major = FUSE_KERNEL_VERSION, .minor = FUSE_KERNEL_MINOR_VERSION,
		.max_readahead = 131072,
		.flags = FUSE_ASYNC_READ | FUSE_BIG_WRITES | FUSE_DO_READDIRPLUS | FUSE_READDIRPLUS_AUTO |
			 FUSE_POSIX_ACL | FUSE_CACHE_SYMLINKS | FUSE_MAX_PAGES | FUSE_PARALLEL_DIROPS |
			 FUSE_INIT_EXT,
	};
	const struct fuse_init_out *out;
	size_t n;

	FUZZ_CHECK(request(h, FUSE_INIT, 0, &in, sizeof(in), NULL, 0, true) == 0);
	out = (const void *)payload(h, &n);
	FUZZ_CHECK(n >= FUSE_COMPAT_22_INIT_OUT_SIZE && out->major == FUSE_KERNEL_VERSION);
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	(void)argc;
	(void)argv;
	make_store();
	return 0;
}

/* The daemon's messages, shown with FUZZ_DAEMON_LOG=1 only. */
__attribute__((format(printf, 2, 0)))
static void quiet_log(enum fuse_log_level level, const char *fmt, va_list ap)
{
	(void)level;
	if (getenv("FUZZ_DAEMON_LOG"))
		vfprintf(stderr, fmt, ap);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static bool ready;
	struct harness h = { .d = { .timeout = 86400.0, .image_fd = -1 }, .budget = 4000 };
	struct cfs_cas_options co = { .verify = true };
	char *argv[] = { (char *)"fuzz-daemon", NULL };
	struct fuse_args args = FUSE_ARGS_INIT(1, argv);
	struct walk *w = NULL;
	uint8_t *copy = NULL;
	uint8_t opt;
	int fd;

	if (!ready) {
		make_store();
		fuse_set_log_func(quiet_log);
		if (getenv("FUZZ_DAEMON_LOG"))
			atexit(report);
		ready = true;
	}
	if (size < 1024 || size > (8u << 20))
		return 0;
	/* Options from the last byte (zero padding in an image as made). */
	opt = data[size - 1];
	h.d.verity = (enum cfsd_verity)((opt & 3) % 3);
	h.d.xattrs = opt & 4 ? CFSD_XATTRS_ALWAYS : CFSD_XATTRS_AUTO;
	h.d.passthrough = CFSD_PT_OFF;
	h.d.single_thread = opt & 8;
	co.io = opt & 16 ? CFS_IO_PREAD : CFS_IO_AUTO;
	co.verify = h.d.verity != CFSD_VERITY_OFF;
	co.require_digest = h.d.verity == CFSD_VERITY_REQUIRE;
	h.check_data = co.verify;

	/* The image borrows its buffer: a copy the size of the input, so ASan
	 * catches a read past it. */
	copy = malloc(size);
	FUZZ_CHECK(copy != NULL);
	memcpy(copy, data, size);
	if (cfs_img_open_mem(copy, size, 0, &h.d.img) < 0)
		goto out;
	cfs_img_get_info(h.d.img, &h.d.info);
	cfsd_global = &h.d;
	H = &h;
	(void)cfsd_scan_xattrs(&h.d);
	FUZZ_CHECK(cfs_cas_open(store_dir, &co, &h.d.cas) == 0);
	FUZZ_CHECK(cfsd_handlers_new(&h.d) == 0);
	h.d.se = fuse_session_new(&args, &cfsd_ops, sizeof(cfsd_ops), &h.d);
	fuse_opt_free_args(&args);
	FUZZ_CHECK(h.d.se != NULL);
	fd = open("/dev/null", O_RDWR | O_CLOEXEC);
	FUZZ_CHECK(fd >= 0);
	FUZZ_CHECK(fuse_session_custom_io(h.d.se, &fake_io, fd) == 0);

	init_session(&h);
	{
		struct fuse_statfs_out *so;
		size_t n;
		if (request(&h, FUSE_STATFS, FUSE_ROOT_ID, NULL, 0, NULL, 0, true) == 0) {
			so = (void *)payload(&h, &n);
			FUZZ_CHECK(n == sizeof(*so));
		}
	}
	w = calloc(1, sizeof(*w));
	FUZZ_CHECK(w != NULL);
	{
		struct fuse_getattr_in gin = { 0 };
		const struct fuse_attr_out *ao;
		size_t n;
		if (request(&h, FUSE_GETATTR, FUSE_ROOT_ID, &gin, sizeof(gin), NULL, 0, true) == 0) {
			ao = (const void *)payload(&h, &n);
			(void)add_node(w, FUSE_ROOT_ID, ao->attr.mode, ao->attr.size);
		}
	}
	for (size_t i = 0; i < w->n && h.budget > 0; i++) {
		struct node nd = w->nodes[i]; /* add_node() may move nothing, but copy */
		do_node(&h, w, &nd);
	}
	bogus_inodes(&h, data, size);
	/* Forget everything looked up, one at a time and in a batch. */
	for (size_t i = 1; i < w->n; i++) {
		struct fuse_forget_in fin = { .nlookup = w->nodes[i].lookups };
		if (i % 2) {
			h.budget++;
			(void)request(&h, FUSE_FORGET, w->nodes[i].ino, &fin, sizeof(fin), NULL, 0, false);
		}
	}
	{
		struct fuse_batch_forget_in bin = { .count = 0 };
		struct fuse_forget_one one[MAX_NODES];
		for (size_t i = 2; i < w->n; i += 2)
			one[bin.count++] = (struct fuse_forget_one){ .nodeid = w->nodes[i].ino,
								     .nlookup = w->nodes[i].lookups };
		h.budget++;
		(void)request(&h, FUSE_BATCH_FORGET, 0, &bin, sizeof(bin), one, bin.count * sizeof(one[0]),
			      false);
	}
	h.budget++;
	(void)request(&h, FUSE_DESTROY, 0, NULL, 0, NULL, 0, true);

	cfsd_handlers_stop(&h.d);
	fuse_session_destroy(h.d.se);
	cfsd_handlers_free(&h.d);
out:
	h.d.cas = cfs_cas_unref(h.d.cas);
	h.d.img = cfs_img_unref(h.d.img);
	cfsd_global = NULL;
	H = NULL;
	free(h.reply);
	free(w);
	free(copy);
	return 0;
}
