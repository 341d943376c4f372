/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * mkcomposefs: build a composefs image from a directory or a dump file,
 * with upstream mkcomposefs 1.0.8's options and output.  One deliberate
 * difference: hard links inside a scanned directory are kept (upstream
 * flattens them), giving the image of the equivalent dump file.
 *
 * The image is built in memory and written only when complete: through a
 * temporary file renamed over IMAGE, so a failure leaves no output behind.
 */
#include "config.h"

#include <fcntl.h>
#include <getopt.h>
#include <pthread.h>
#include <sched.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "cas.h"
#include "cfs-writer.h"
#include "output.h"

static const char *prog = "mkcomposefs";

static void usage(FILE *f)
{
	fprintf(f,
		"Usage: %s [OPTIONS] SOURCE IMAGE\n"
		"Build a composefs image from the directory SOURCE (or, with --from-file,\n"
		"from the composefs dump file SOURCE, '-' for stdin).  IMAGE '-' is stdout.\n"
		"\n"
		"Options:\n"
		"  --digest-store=PATH   Store content files in this directory\n"
		"  --use-epoch           Make all mtimes zero\n"
		"  --skip-devices        Don't store device nodes\n"
		"  --skip-xattrs         Don't store file xattrs\n"
		"  --user-xattrs         Only store user.* xattrs\n"
		"  --print-digest        Print the digest of the image\n"
		"  --print-digest-only   Print the digest of the image, don't write image\n"
		"  --from-file           The source is a dump file, not a directory\n"
		"  --min-version=N       Use this minimal format version (default=%d)\n"
		"  --max-version=N       Use this maximum format version (default=%d)\n"
		"  --threads=N           Threads computing digests and copying files\n"
		"                        (default: number of CPUs)\n"
		"  -h, --help            Show this help\n"
		"  -V, --version         Show the version\n",
		prog, CFS_DEFAULT_VERSION_MIN, CFS_DEFAULT_VERSION_MAX);
}

static int cpu_count(void)
{
	cpu_set_t set;
	long n;

	if (sched_getaffinity(0, sizeof(set), &set) == 0)
		return CPU_COUNT(&set);
	n = sysconf(_SC_NPROCESSORS_ONLN);
	return n > 0 ? (int)n : 1;
}

/* ---- file contents of a scanned tree ---------------------------------------- */

struct work_item {
	struct cfs_node *node;
	char *path;
};

struct work {
	struct work_item *items;
	size_t n, cap;
	const char *store;
	atomic_size_t next;
	atomic_int failed;
	pthread_mutex_t lock;
	char *error; /* first error, for the message */
	/* Progress, shown on a terminal. */
	atomic_size_t files_done;
	atomic_uint_fast64_t bytes_done;
	uint64_t bytes_total;
	atomic_bool finished;
};

static char *path_join(const char *a, const char *b)
{
	char *s;
	size_t la = strlen(a);

	if (asprintf(&s, "%s%s%s", a, (la && a[la - 1] != '/') ? "/" : "", b) < 0)
		return NULL;
	return s;
}

/* Regular files with data: small ones get inlined, the others a digest
 * and a backing path (and a copy in the store). */
static int collect(struct work *wk, struct cfs_node *node, const char *path)
{
	for (size_t i = 0; i < node->n_children; i++) {
		struct cfs_node *c = node->children[i];
		char *p;

		if (c->link_to)
			continue;
		if ((c->mode & S_IFMT) == S_IFDIR) {
			p = path_join(path, c->name);
			if (!p)
				return -ENOMEM;
			int r = collect(wk, c, p);
			free(p);
			if (r < 0)
				return r;
		} else if ((c->mode & S_IFMT) == S_IFREG && c->size > 0) {
			if (CFS_GROW(wk->items, wk->cap, wk->n + 1) < 0)
				return -ENOMEM;
			p = path_join(path, c->name);
			if (!p)
				return -ENOMEM;
			wk->items[wk->n++] = (struct work_item){ .node = c, .path = p };
		}
	}
	return 0;
}

static int read_exact(int fd, void *buf, size_t len)
{
	uint8_t *p = buf;
	off_t off = 0;

	while (len > 0) {
		ssize_t n = pread(fd, p, len, off);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		if (n == 0)
			return -ENODATA; /* the file shrank since we looked at it */
		p += n;
		off += n;
		len -= (size_t)n;
	}
	return 0;
}

static int process_item(struct work *wk, struct work_item *it, const char **ret_what)
{
	/* O_NONBLOCK: a file replaced by a FIFO since the scan must not
	 * block the open (it is refused just below). */
	_cleanup_close_ int fd = open(it->path, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
	struct cfs_node *node = it->node;
	char hex[2 * CFS_DIGEST_SIZE + 1];
	struct stat st;
	int r;

	*ret_what = "cannot open";
	if (fd < 0)
		return -errno;
	*ret_what = "changed while building the image";
	if (fstat(fd, &st) < 0)
		return -errno;
	if (!S_ISREG(st.st_mode) || (uint64_t)st.st_size != node->size)
		return -ESTALE;
	if (node->size <= CFS_INLINE_SCAN_MAX) {
		uint8_t buf[CFS_INLINE_SCAN_MAX];
		*ret_what = "cannot read";
		r = read_exact(fd, buf, (size_t)node->size);
		if (r < 0)
			return r;
		node->content = malloc((size_t)node->size);
		if (!node->content)
			return -ENOMEM;
		memcpy(node->content, buf, (size_t)node->size);
		return 0;
	}
	*ret_what = "cannot compute fs-verity digest";
	r = cfs_fsverity_digest_fd(fd, node->digest);
	if (r < 0)
		return r;
	node->digest_set = true;
	cfs_digest_to_hex(node->digest, hex);
	if (asprintf(&node->payload, "%.2s/%s", hex, hex + 2) < 0) {
		node->payload = NULL;
		return -ENOMEM;
	}
	if (wk->store) {
		*ret_what = "cannot copy into the digest store";
		r = cfs_store_import(wk->store, fd, node->digest);
		if (r == -ESTALE) /* the copy no longer has the digest taken above */
			*ret_what = "changed while building the image";
		if (r < 0)
			return r;
	}
	return 0;
}

static void *worker(void *userdata)
{
	struct work *wk = userdata;

	while (!atomic_load(&wk->failed)) {
		size_t i = atomic_fetch_add(&wk->next, 1);
		const char *what;
		int r;

		if (i >= wk->n)
			break;
		r = process_item(wk, &wk->items[i], &what);
		atomic_fetch_add(&wk->files_done, 1);
		atomic_fetch_add(&wk->bytes_done, wk->items[i].node->size);
		if (r < 0) {
			pthread_mutex_lock(&wk->lock);
			if (!wk->error &&
			    asprintf(&wk->error, "%s: %s: %s", wk->items[i].path, what, strerror(-r)) < 0)
				wk->error = NULL;
			pthread_mutex_unlock(&wk->lock);
			atomic_store(&wk->failed, 1);
		}
	}
	return NULL;
}

static double now_seconds(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* On a terminal, twice a second: files and bytes done, and the rate; the
 * line is erased at the end, so that only the result stays. */
static void *progress(void *userdata)
{
	struct work *wk = userdata;
	const struct timespec half = { .tv_nsec = 500000000 };
	double start = now_seconds();
	bool shown = false;

	while (!atomic_load(&wk->finished)) {
		nanosleep(&half, NULL);
		if (atomic_load(&wk->finished))
			break;
		double el = now_seconds() - start, mib = (double)atomic_load(&wk->bytes_done) / 1048576.0;
		fprintf(stderr, "\rmkcomposefs: %zu/%zu files, %.0f/%.0f MiB, %.0f MiB/s\033[K",
			atomic_load(&wk->files_done), wk->n, mib, (double)wk->bytes_total / 1048576.0,
			el > 0 ? mib / el : 0.0);
		shown = true;
	}
	if (shown)
		fputs("\r\033[K", stderr);
	return NULL;
}

static void fill_contents(struct cfs_node *root, const char *src, const char *store, int threads)
{
	struct work wk = { .store = store, .lock = PTHREAD_MUTEX_INITIALIZER };
	pthread_t *tids, ptid;
	bool progress_on = false;
	int started = 0;

	if (collect(&wk, root, src) < 0)
		die("out of memory");
	for (size_t i = 0; i < wk.n; i++)
		wk.bytes_total += wk.items[i].node->size;
	if (isatty(STDERR_FILENO))
		progress_on = pthread_create(&ptid, NULL, progress, &wk) == 0;
	if ((size_t)threads > wk.n)
		threads = wk.n > 0 ? (int)wk.n : 1;
	tids = calloc((size_t)threads, sizeof(*tids));
	if (!tids)
		die("out of memory");
	for (int i = 1; i < threads; i++) {
		if (pthread_create(&tids[i], NULL, worker, &wk) != 0)
			break;
		started = i;
	}
	worker(&wk);
	for (int i = 1; i <= started; i++)
		pthread_join(tids[i], NULL);
	free(tids);
	atomic_store(&wk.finished, true);
	if (progress_on)
		pthread_join(ptid, NULL);
	if (atomic_load(&wk.failed))
		die("%s", wk.error ? wk.error : "out of memory");
	for (size_t i = 0; i < wk.n; i++)
		free(wk.items[i].path);
	free(wk.items);
}

static void mkdir_p(const char *path)
{
	_cleanup_free_ char *p = strdup(path);
	struct stat st;

	if (!p)
		die("out of memory");
	for (char *s = p + 1;; s++) {
		if (*s == '/' || *s == '\0') {
			char c = *s;
			*s = '\0';
			if (mkdir(p, 0755) < 0 && errno != EEXIST)
				die("%s: cannot create directory: %m", p);
			*s = c;
			if (c == '\0')
				break;
		}
	}
	if (stat(path, &st) < 0 || !S_ISDIR(st.st_mode))
		die("%s: not a directory", path);
}

static long parse_long_opt(const char *name, const char *arg)
{
	char *end;
	long v;

	errno = 0;
	v = strtol(arg, &end, 10);
	if (*arg == '\0' || *end != '\0' || errno)
		die("invalid %s '%s'", name, arg);
	return v;
}

int main(int argc, char **argv)
{
	enum {
		OPT_SKIP_XATTRS = 256,
		OPT_USER_XATTRS,
		OPT_SKIP_DEVICES,
		OPT_USE_EPOCH,
		OPT_DIGEST_STORE,
		OPT_PRINT_DIGEST,
		OPT_PRINT_DIGEST_ONLY,
		OPT_FROM_FILE,
		OPT_MIN_VERSION,
		OPT_MAX_VERSION,
		OPT_THREADS,
	};
	static const struct option longopts[] = {
		{ "skip-xattrs", no_argument, NULL, OPT_SKIP_XATTRS },
		{ "user-xattrs", no_argument, NULL, OPT_USER_XATTRS },
		{ "skip-devices", no_argument, NULL, OPT_SKIP_DEVICES },
		{ "use-epoch", no_argument, NULL, OPT_USE_EPOCH },
		{ "digest-store", required_argument, NULL, OPT_DIGEST_STORE },
		{ "print-digest", no_argument, NULL, OPT_PRINT_DIGEST },
		{ "print-digest-only", no_argument, NULL, OPT_PRINT_DIGEST_ONLY },
		{ "from-file", no_argument, NULL, OPT_FROM_FILE },
		{ "min-version", required_argument, NULL, OPT_MIN_VERSION },
		{ "max-version", required_argument, NULL, OPT_MAX_VERSION },
		{ "threads", required_argument, NULL, OPT_THREADS },
		{ "help", no_argument, NULL, 'h' },
		{ "version", no_argument, NULL, 'V' },
		{},
	};
	_cleanup_(cfs_node_freep) struct cfs_node *root = NULL;
	struct membuf img = { 0 };
	const char *src, *out = NULL, *store = NULL;
	bool print_digest = false, digest_only = false, from_file = false, version_set = false;
	long min_version = 0, max_version = 0, threads = cpu_count();
	unsigned scan_flags = 0;
	int opt, r;

	while ((opt = getopt_long(argc, argv, "hV", longopts, NULL)) != -1) {
		switch (opt) {
		case 'V':
			printf("mkcomposefs %s (composefs-fuse; images as composefs 1.0.8 makes)\n",
			       PACKAGE_VERSION);
			return EXIT_SUCCESS;
		case OPT_SKIP_XATTRS:
			scan_flags |= CFS_SCAN_SKIP_XATTRS;
			break;
		case OPT_USER_XATTRS:
			scan_flags |= CFS_SCAN_USER_XATTRS;
			break;
		case OPT_SKIP_DEVICES:
			scan_flags |= CFS_SCAN_SKIP_DEVICES;
			break;
		case OPT_USE_EPOCH:
			scan_flags |= CFS_SCAN_USE_EPOCH;
			break;
		case OPT_DIGEST_STORE:
			/* Upstream would fill the current directory. */
			if (optarg[0] == '\0')
				die("empty --digest-store path");
			store = optarg;
			break;
		case OPT_PRINT_DIGEST:
			print_digest = true;
			break;
		case OPT_PRINT_DIGEST_ONLY:
			print_digest = digest_only = true;
			break;
		case OPT_FROM_FILE:
			from_file = true;
			break;
		case OPT_MIN_VERSION:
			version_set = true;
			min_version = parse_long_opt("--min-version", optarg);
			break;
		case OPT_MAX_VERSION:
			version_set = true;
			max_version = parse_long_opt("--max-version", optarg);
			break;
		case OPT_THREADS:
			threads = parse_long_opt("--threads", optarg);
			if (threads <= 0 || threads > 4096)
				die("invalid --threads '%s'", optarg);
			break;
		case 'h':
			usage(stdout);
			return EXIT_SUCCESS;
		default:
			usage(stderr);
			return EXIT_FAILURE;
		}
	}
	/* Upstream: without any version option the range is 0..1; with one,
	 * the other defaults to 0 (and a max below min means min). */
	if (!version_set) {
		min_version = CFS_DEFAULT_VERSION_MIN;
		max_version = CFS_DEFAULT_VERSION_MAX;
	}
	if (min_version < 0 || min_version > CFS_VERSION_MAX)
		die("unsupported --min-version %ld (this writer supports 0..%d)", min_version,
		    CFS_VERSION_MAX);
	if (max_version < 0 || max_version > CFS_VERSION_MAX)
		die("unsupported --max-version %ld (this writer supports 0..%d)", max_version,
		    CFS_VERSION_MAX);

	argc -= optind;
	argv += optind;
	if (argc < 1)
		die("no source path specified (see --help)");
	if (argc > 2)
		die("too many arguments (see --help)");
	src = argv[0];
	if (src[0] == '\0')
		die("empty source path specified");
	if (digest_only && argc == 2)
		die("cannot specify an image path with --print-digest-only");
	if (!digest_only && argc < 2)
		die("no destination path specified (see --help)");
	if (!digest_only)
		out = argv[1];
	if ((scan_flags & CFS_SCAN_SKIP_XATTRS) && (scan_flags & CFS_SCAN_USER_XATTRS))
		die("--skip-xattrs and --user-xattrs conflict");

	if (from_file) {
		_cleanup_free_ char *err = NULL;
		bool is_stdin = strcmp(src, "-") == 0;
		FILE *in = is_stdin ? stdin : fopen(src, "re");

		if (!in)
			die("%s: cannot open: %m", src);
		r = cfs_dump_parse_file(in, getenv("CFS_PARSE_STRICT") ? CFS_PARSE_STRICT : 0, &root,
					&err);
		if (!is_stdin)
			fclose(in);
		if (r < 0)
			die("%s: %s", is_stdin ? "<stdin>" : src, err ? err : strerror(-r));
	} else {
		_cleanup_free_ char *failed = NULL;
		struct stat st;

		if (lstat(src, &st) < 0)
			die("%s: %m", src);
		if (!S_ISDIR(st.st_mode))
			die("%s: not a directory (use --from-file for a dump file)", src);
		if (store)
			mkdir_p(store);
		r = cfs_tree_from_dir(AT_FDCWD, src, scan_flags, &root, &failed);
		if (r < 0)
			die("%s: %s", failed ? failed : src,
			    r == -ERANGE ? "xattrs too large" : strerror(-r));
		fill_contents(root, src, store, (int)threads);
	}

	_cleanup_free_ char *bad_path = NULL;
	struct cfs_write_options wo = {
		.ret_error_path = &bad_path,
		.min_version = (uint32_t)min_version,
		.max_version = (uint32_t)max_version,
		.write = membuf_write,
		.userdata = &img,
	};
	r = cfs_write_image(root, &wo, NULL);
	if (r < 0)
		die("%s: cannot write image%s%s: %s", src, bad_path ? ": " : "", bad_path ? bad_path : "",
		    r == -EFBIG ? "file too large for a composefs chunk table" :
		    r == -ERANGE ? "xattrs too large" : strerror(-r));

	if (out) {
		_cleanup_free_ char *werr = NULL;
		if (output_write(out, &img, &werr) < 0)
			die("%s", werr ? werr : "out of memory");
	}
	if (print_digest) {
		uint8_t digest[CFS_DIGEST_SIZE];
		char hex[2 * CFS_DIGEST_SIZE + 1];

		r = cfs_fsverity_digest_mem(img.data, img.len, digest);
		if (r < 0)
			die("cannot compute the image digest: %s", strerror(-r));
		cfs_digest_to_hex(digest, hex);
		printf("%s\n", hex);
	}
	free(img.data);
	if (fflush(stdout) != 0)
		die("stdout: %m");
	return EXIT_SUCCESS;
}
