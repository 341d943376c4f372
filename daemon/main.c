/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * composefs-fuse: serve a composefs image read-only through FUSE, with the
 * content of external files verified against their fs-verity digests.
 *
 *   composefs-fuse [options] IMAGE MOUNTPOINT
 *   composefs-fuse -o source=IMAGE,basedir=DIR MOUNTPOINT      (upstream form)
 *   mount -t fuse.composefs-fuse IMAGE MNT -o basedir=DIR       (mount.fuse3)
 *
 * Everything that can fail for a reason the user can fix (bad image, digest
 * mismatch, missing basedir, unusable mountpoint, bad option) is checked
 * before mounting, and reported with the cause.
 */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <linux/capability.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include "cfs-tools.h"
#include "cfsd.h"

struct options {
	char *source;
	char *basedir;
	char *digest;
	char *verity;
	char *passthrough;
	char *tree_cache;
	char *tree_cache_size;
	char *io;
	char *stats_file;
	char *timeout;
	char *threads;
	char *xattrs;
	char *signature;
	char *cert;
	char *uring;
	int noauto_unmount;
	int keep_caps;
	int private_mount;
	/* Upstream's names: mount.composefs (verity, tryverity) and cfs-fuse
	 * (noacl); the overlay-only ones are refused with a reason. */
	int verity_flag, tryverity_flag, noacl;
	char *upperdir, *workdir, *idmap;
	char *positional[3];
	int n_positional;
	int help, version;
};

#define OPT(t, p) { t, offsetof(struct options, p), 1 }
static const struct fuse_opt cfsd_opts[] = {
	OPT("source=%s", source),
	OPT("basedir=%s", basedir),
	OPT("digest=%s", digest),
	OPT("verity=%s", verity),
	OPT("passthrough=%s", passthrough),
	OPT("tree_cache=%s", tree_cache),
	OPT("tree_cache_size=%s", tree_cache_size),
	OPT("io=%s", io),
	OPT("stats_file=%s", stats_file),
	OPT("timeout=%s", timeout),
	OPT("threads=%s", threads),
	OPT("xattrs=%s", xattrs),
	OPT("signature=%s", signature),
	OPT("cert=%s", cert),
	OPT("uring=%s", uring),
	OPT("noauto_unmount", noauto_unmount),
	OPT("keep_caps", keep_caps),
	OPT("private", private_mount),
	OPT("verity", verity_flag),
	OPT("tryverity", tryverity_flag),
	OPT("noacl", noacl),
	OPT("upperdir=%s", upperdir),
	OPT("workdir=%s", workdir),
	OPT("idmap=%s", idmap),
	FUSE_OPT_END
};

static int opt_proc(void *data, const char *arg, int key, struct fuse_args *outargs)
{
	struct options *o = data;

	if (key == FUSE_OPT_KEY_NONOPT) {
		if (o->n_positional >= 2) {
			cfsd_log(FUSE_LOG_ERR, "unexpected argument '%s'\n", arg);
			return -1;
		}
		o->positional[o->n_positional] = strdup(arg);
		if (!o->positional[o->n_positional])
			return -1;
		o->n_positional++;
		return 0;
	}
	if (key == FUSE_OPT_KEY_OPT && (!strcmp(arg, "-h") || !strcmp(arg, "--help")))
		o->help = 1;
	if (key == FUSE_OPT_KEY_OPT && (!strcmp(arg, "-V") || !strcmp(arg, "--version")))
		o->version = 1;
	return 1;
}

static void usage(const char *prog)
{
	printf("Usage: %s [OPTIONS] IMAGE MOUNTPOINT\n"
	       "       %s -o source=IMAGE[,OPTIONS] MOUNTPOINT\n"
	       "Serve a composefs image read-only, as the kernel's composefs mount shows it,\n"
	       "with the content of external files verified against their fs-verity digests.\n"
	       "\n"
	       "composefs-fuse options (-o NAME=VALUE):\n"
	       "    basedir=DIR[:DIR...]   object store(s) holding external file content\n"
	       "    digest=HEX             expected fs-verity digest of the image\n"
	       "    signature=FILE         mount only if FILE, an fs-verity signature (PKCS#7,\n"
	       "                           DER, as fsverity sign writes), signs the image's\n"
	       "                           digest with the key of a cert= certificate\n"
	       "    cert=FILE[:FILE...]    certificates (PEM or DER) trusted for signature=\n"
	       "    verity=on|require|off  verify objects (default on); require: refuse\n"
	       "                           external files without a digest\n"
	       "    passthrough=auto|off|always\n"
	       "                           let the kernel read backing files directly when\n"
	       "                           integrity holds (auto, default), never, or also\n"
	       "                           after a whole-file check at open (always: weaker)\n"
	       "    threads=N              maximum number of worker threads\n"
	       "    tree_cache=DIR|none    where to persist Merkle trees\n"
	       "    tree_cache_size=BYTES  in-memory Merkle tree cache (K/M/G suffixes)\n"
	       "    io=auto|uring|pread    how backing files are read\n"
	       "    timeout=SECONDS        entry and attribute cache timeout (default 86400)\n"
	       "    uring=off|auto         auto: serve requests over io_uring when the kernel\n"
	       "                           offers it (Linux 6.14+, fuse enable_uring=Y); faster\n"
	       "                           cold metadata walks, slower cold reads (default off)\n"
	       "    xattrs=auto|always     auto (default): an image without xattrs a reader\n"
	       "                           could see tells the kernel there are none (no round\n"
	       "                           trips; EOPNOTSUPP instead of ENODATA); always: answer\n"
	       "                           every request as the kernel mount does\n"
	       "    stats_file=FILE        write counters there on SIGUSR1 and at exit\n"
	       "    private                as root, serve only root (default: everyone, the\n"
	       "                           kernel checking permissions, as the kernel mount)\n"
	       "    verity, tryverity      mount.composefs's names: verity=require, verity=on\n"
	       "    noacl                  cfs-fuse's: do not have the kernel enforce POSIX ACLs\n"
	       "    noauto_unmount         do not add auto_unmount for ordinary users\n"
	       "    keep_caps              as root, keep every capability after mounting\n"
	       "    source=IMAGE           the image, instead of the IMAGE argument\n"
	       "\n",
	       prog, prog);
}

static int parse_size(const char *s, uint64_t *ret_size)
{
	char *end;
	unsigned long long v;
	unsigned shift = 0;

	/* strtoull() would take "-1" (as the largest value) and spaces. */
	if (*s < '0' || *s > '9')
		return -EINVAL;
	errno = 0;
	v = strtoull(s, &end, 10);
	if (errno || end == s)
		return -EINVAL;
	switch (*end) {
	case 'k': case 'K': shift = 10; end++; break;
	case 'm': case 'M': shift = 20; end++; break;
	case 'g': case 'G': shift = 30; end++; break;
	default: break;
	}
	if (*end || (shift && v > (UINT64_MAX >> shift)))
		return -EINVAL;
	*ret_size = (uint64_t)v << shift;
	return 0;
}

/* Resolve every directory of a store list (cfs_basedirs_parse()); one that
 * is missing, or an empty name in the list, is an error naming it. */
static int resolve_basedirs(const char *list, char **ret_list)
{
	_cleanup_free_ char *out = NULL;
	char **dirs = NULL;
	size_t outlen = 0;
	int n = cfs_basedirs_parse(list, &dirs);

	if (n == -EINVAL) {
		cfsd_log(FUSE_LOG_ERR, "basedir=%s: an empty directory name in the list\n", list);
		return n;
	}
	if (n < 0)
		return n;
	for (int i = 0; i < n; i++) {
		char real[PATH_MAX];
		struct stat st;
		size_t len;
		char *grown;

		if (!realpath(dirs[i], real) || stat(real, &st) < 0) {
			cfsd_log(FUSE_LOG_ERR, "basedir '%s': %m\n", dirs[i]);
			cfs_strv_free(dirs);
			return -ENOENT;
		}
		if (!S_ISDIR(st.st_mode)) {
			cfsd_log(FUSE_LOG_ERR, "basedir '%s': not a directory\n", dirs[i]);
			cfs_strv_free(dirs);
			return -ENOTDIR;
		}
		len = strlen(real);
		grown = realloc(out, outlen + len + 2);
		if (!grown) {
			cfs_strv_free(dirs);
			return -ENOMEM;
		}
		out = grown;
		if (outlen)
			out[outlen++] = ':';
		memcpy(out + outlen, real, len + 1);
		outlen += len;
	}
	cfs_strv_free(dirs);
	*ret_list = steal_ptr(&out);
	return 0;
}

/* The tree cache directory as an absolute path (the daemon changes to /);
 * the store creates it. */
static char *absolute_path(const char *path)
{
	_cleanup_free_ char *cwd = NULL;
	char *p = NULL;

	if (path[0] == '/')
		return strdup(path);
	cwd = getcwd(NULL, 0);
	if (!cwd)
		return NULL;
	return asprintf(&p, "%s/%s", cwd, path) < 0 ? NULL : p;
}

/* The default tree cache: the first of $CACHE_DIRECTORY (a unit's
 * CacheDirectory=, /var/cache/composefs-fuse for the system unit), else
 * cfs_tree_cache_default_dir() ($XDG_CACHE_HOME or ~/.cache), or
 * /var/cache/composefs-fuse for root when neither variable is set.  NULL (no
 * persistence) for an ordinary user without either; -ENOMEM only on
 * allocation failure. */
static int default_tree_cache(char **ret_dir)
{
	const char *unit_cache = getenv("CACHE_DIRECTORY");
	int r;

	if (unit_cache && unit_cache[0] == '/') {
		*ret_dir = strndup(unit_cache, strcspn(unit_cache, ":"));
		return *ret_dir ? 0 : -ENOMEM;
	}
	r = cfs_tree_cache_default_dir(ret_dir);
	if (r != -ENOENT)
		return r;
	*ret_dir = NULL;
	if (geteuid() != 0)
		return 0;
	*ret_dir = strdup("/var/cache/composefs-fuse");
	return *ret_dir ? 0 : -ENOMEM;
}

/* The stats file and the daemon it describes; under stats_lock, because the
 * SIGUSR1 thread may be writing while main() tears the daemon down. */
static pthread_mutex_t stats_lock = PTHREAD_MUTEX_INITIALIZER;
static char *stats_path;
static struct cfsd *stats_d;

static void write_stats_locked(void)
{
	_cleanup_free_ char *tmp = NULL;
	FILE *f;
	int fd;

	if (!stats_path || !stats_d)
		return;
	if (asprintf(&tmp, "%s.tmp.%ld", stats_path, (long)getpid()) < 0)
		return;
	/* The name is predictable and the directory may be shared (/tmp): never
	 * write through a file or symlink someone else put there. */
	(void)unlink(tmp);
	fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0644);
	f = fd >= 0 ? fdopen(fd, "w") : NULL;
	if (!f) {
		cfsd_log(FUSE_LOG_WARNING, "stats_file '%s': %m\n", tmp);
		if (fd >= 0) {
			close(fd);
			unlink(tmp);
		}
		return;
	}
	cfsd_stats_print(stats_d, f);
	if (fclose(f) != 0 || rename(tmp, stats_path) < 0) {
		cfsd_log(FUSE_LOG_WARNING, "stats_file '%s': %m\n", stats_path);
		unlink(tmp);
	}
}

static void write_stats(void)
{
	pthread_mutex_lock(&stats_lock);
	write_stats_locked();
	pthread_mutex_unlock(&stats_lock);
}

/* Write the stats one last time (@final) or not, and let the SIGUSR1 thread
 * write no more: the daemon is about to be freed. */
static void stop_stats(bool final)
{
	pthread_mutex_lock(&stats_lock);
	if (final)
		write_stats_locked();
	stats_d = NULL;
	pthread_mutex_unlock(&stats_lock);
}

/* SIGUSR1 is blocked in every thread; this one waits for it. */
static void *stats_thread(void *arg)
{
	sigset_t set;
	int sig;

	sigemptyset(&set);
	sigaddset(&set, SIGUSR1);
	for (;;) {
		if (sigwait(&set, &sig) == 0 && sig == SIGUSR1)
			write_stats();
	}
	return NULL;
}

static char *find_in_path(const char *name)
{
	const char *path = getenv("PATH");
	_cleanup_free_ char *copy = strdup(path && *path ? path : "/usr/bin:/bin");
	char *save = NULL;

	if (!copy)
		return NULL;
	for (char *dir = strtok_r(copy, ":", &save); dir; dir = strtok_r(NULL, ":", &save)) {
		char *p = NULL;
		if (asprintf(&p, "%s/%s", dir, name) < 0)
			return NULL;
		if (access(p, X_OK) == 0)
			return p;
		free(p);
	}
	return NULL;
}

/*
 * auto_unmount for ordinary users.  libfuse hands it to fusermount3, but
 * fusermount3 before libfuse 3.15 (Debian 12 ships 3.14) checks for a dead
 * filesystem by opening the mountpoint as root, which a FUSE mount without
 * allow_other refuses with EACCES, so a killed daemon leaves a dead mount.
 * This watchdog, a child that holds nothing but one end of a pipe, wakes up
 * when the daemon is gone (the other end closes, even on SIGKILL), checks as
 * the mount's owner that the mountpoint is dead and runs
 * `fusermount3 -u -z` on it.  After a clean unmount it finds nothing to do.
 */
static int start_unmount_watchdog(const char *mnt)
{
	_cleanup_free_ char *fusermount = find_in_path("fusermount3");
	_cleanup_free_ char *abs = realpath(mnt, NULL);
	int pfd[2];
	pid_t pid;

	if (!fusermount || !abs)
		return -ENOENT;
	if (pipe2(pfd, O_CLOEXEC) < 0)
		return -errno;
	pid = fork();
	if (pid < 0) {
		int r = -errno;
		close(pfd[0]);
		close(pfd[1]);
		return r;
	}
	if (pid == 0) {
		/* Only async-signal-safe calls from here: the parent has threads. */
		char *argv[] = { "fusermount3", "-u", "-z", "-q", "--", abs, NULL };
		char c;
		int fd = open("/dev/null", O_RDWR);

		/* Signals meant for the daemon reach the whole unit or process
		 * group (systemctl kill -s USR1, a terminal's Ctrl-C): the
		 * watchdog must outlive them, to clean up if the daemon dies. */
		static const int ignored[] = { SIGUSR1, SIGUSR2, SIGHUP, SIGINT, SIGTERM, SIGQUIT, SIGPIPE };
		for (size_t i = 0; i < sizeof(ignored) / sizeof(ignored[0]); i++)
			signal(ignored[i], SIG_IGN);
		setsid();
		if (fd >= 0) {
			dup2(fd, 0);
			dup2(fd, 1);
			dup2(fd, 2);
		}
		/* Keep no copy of /dev/fuse: it would keep a dead mount alive. */
		close_range(3, (unsigned)pfd[0] - 1, 0);
		close_range((unsigned)pfd[0] + 1, ~0U, 0);
		while (read(pfd[0], &c, 1) < 0 && errno == EINTR)
			;
		/* A dead connection answers ENOTCONN, or ECONNABORTED to a
		 * request that was waiting for it (an INIT never answered). */
		fd = open(abs, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
		if (fd >= 0 || (errno != ENOTCONN && errno != ECONNABORTED))
			_exit(0);
		execv(fusermount, argv);
		_exit(127);
	}
	close(pfd[0]);
	/* pfd[1] stays open (close-on-exec) for as long as this process lives. */
	return 0;
}

/*
 * As root, keep after mounting only the capabilities still needed: reading
 * objects and the tree cache whatever their modes (CAP_DAC_OVERRIDE,
 * CAP_DAC_READ_SEARCH), registering passthrough backing files and unmounting
 * at exit (CAP_SYS_ADMIN).  Everything else leaves the bounding, permitted
 * and effective sets, and no exec can gain privileges again, which limits
 * what a daemon subverted by a hostile image could do.
 */
static int drop_privileges(void)
{
	uint64_t keep = (1ULL << CAP_SYS_ADMIN) | (1ULL << CAP_DAC_OVERRIDE) |
			(1ULL << CAP_DAC_READ_SEARCH);
	struct __user_cap_header_struct hdr = { .version = _LINUX_CAPABILITY_VERSION_3 };
	struct __user_cap_data_struct data[2] = { 0 };

	for (int cap = 0; cap < 64; cap++) {
		if (keep & (1ULL << cap))
			continue;
		if (prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) < 0) {
			if (errno == EINVAL)
				break; /* past the last capability this kernel knows */
			return -errno;
		}
	}
	data[0].effective = data[0].permitted = (uint32_t)keep;
	data[1].effective = data[1].permitted = (uint32_t)(keep >> 32);
	if (syscall(SYS_capset, &hdr, data) < 0)
		return -errno;
	if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0)
		return -errno;
	return 0;
}

/*
 * Raise the soft RLIMIT_NOFILE to the hard limit (the soft one is often
 * 1024, or lower in containers) and return how many idle objects the store
 * may keep open: most of the limit, less a reserve for /dev/fuse, io_uring
 * rings (one per thread), the image, basedirs, tree files being read and
 * the stats file; at most 4096 (about 1 KiB of memory each, and a tree
 * of a small object is rebuilt from the one read a cache miss costs
 * anyway).  The store closes idle objects, least recently used first, and
 * retries once when an open still meets EMFILE.
 */
static size_t setup_fd_limit(unsigned max_threads)
{
	const size_t reserve = 32 + 2 * (size_t)(max_threads ? max_threads : 10);
	struct rlimit rl;
	size_t cur;

	if (getrlimit(RLIMIT_NOFILE, &rl) < 0)
		return 256;
	if (rl.rlim_cur < rl.rlim_max) {
		rlim_t old = rl.rlim_cur;

		rl.rlim_cur = rl.rlim_max;
		if (setrlimit(RLIMIT_NOFILE, &rl) < 0)
			rl.rlim_cur = old;
	}
	cur = rl.rlim_cur == RLIM_INFINITY || rl.rlim_cur > (1U << 20) ? (1U << 20) : (size_t)rl.rlim_cur;
	cur = cur > 2 * reserve ? cur - reserve : cur / 2;
	return cur < 8 ? 8 : cur > 4096 ? 4096 : cur;
}

static int open_cas(struct cfsd *d, const char *basedirs, const struct cfs_cas_options *co)
{
	int r = cfs_cas_open(basedirs, co, &d->cas);
	if (r < 0)
		cfsd_log(FUSE_LOG_ERR, "cannot open object store '%s': %s\n", basedirs, strerror(-r));
	return r;
}

/*
 * Open the store for the first time, deciding whether Merkle trees persist.
 * cfs_cas_open() fails when the tree cache directory cannot be created or
 * opened, which it reports as a plain -errno: opening again without it
 * tells a tree cache problem from a store problem.  An unusable default
 * location (a read-only or missing home, as for many service users) costs
 * only persistence, with one warning; a directory the user named is an
 * error naming it.  On return co->tree_cache_dir is what the store uses,
 * for the reopen after daemonizing.
 */
static int open_cas_first(struct cfsd *d, const char *basedirs, struct cfs_cas_options *co,
			  bool explicit_dir)
{
	const char *dir = co->tree_cache_dir, *why;
	int r2, r = cfs_cas_open(basedirs, co, &d->cas);

	if (r >= 0 || !dir)
		goto out;
	co->tree_cache_dir = NULL;
	r2 = cfs_cas_open(basedirs, co, &d->cas);
	if (r2 < 0) {
		r = r2;
		goto out; /* the store itself */
	}
	why = cfs_tree_cache_strerror(r);
	if (explicit_dir) {
		d->cas = cfs_cas_unref(d->cas);
		cfsd_log(FUSE_LOG_ERR, "tree_cache '%s': %s\n", dir, why);
		return r;
	}
	cfsd_log(FUSE_LOG_WARNING, "tree cache '%s' unusable (%s): Merkle trees are not saved "
		 "across mounts\n", dir, why);
	return 0;
out:
	if (r < 0)
		cfsd_log(FUSE_LOG_ERR, "cannot open object store '%s': %s\n", basedirs,
			strerror(-r));
	return r;
}

/* The index of @value in @names, 0 (the default) for NULL; prints the
 * choices and returns -EINVAL for anything else. */
static int parse_choice(const char *opt, const char *value, const char *const *names, size_t n)
{
	if (!value)
		return 0;
	for (size_t i = 0; i < n; i++)
		if (!strcmp(value, names[i]))
			return (int)i;
	char choices[256] = "";
	size_t used = 0;

	for (size_t i = 0; i < n && used < sizeof(choices); i++)
		used += (size_t)snprintf(choices + used, sizeof(choices) - used, "%s%s",
					 i == 0 ? "" : i + 1 < n ? ", " : " or ", names[i]);
	cfsd_log(FUSE_LOG_ERR, "%s=%s: expected %s\n", opt, value, choices);
	return -EINVAL;
}

/* Decode our own options into @d and @co.  Prints why and returns -EINVAL
 * on a bad value. */
static int apply_options(const struct options *o, struct cfsd *d, struct cfs_cas_options *co)
{
	static const char *const io_names[] = {
		[CFS_IO_AUTO] = "auto", [CFS_IO_URING] = "uring", [CFS_IO_PREAD] = "pread",
	};
	int r;

	r = parse_choice("verity", o->verity, cfsd_verity_names, ARRAY_SIZE(cfsd_verity_names));
	if (r < 0)
		return r;
	d->verity = (enum cfsd_verity)r;
	if (o->verity_flag + o->tryverity_flag + !!o->verity > 1) {
		cfsd_log(FUSE_LOG_ERR, "verity, tryverity and verity= exclude each other\n");
		return -EINVAL;
	}
	if (o->verity_flag)
		d->verity = CFSD_VERITY_REQUIRE; /* every file has a digest, every object matches */
	else if (o->tryverity_flag)
		d->verity = CFSD_VERITY_ON;      /* objects with a digest are checked */
	d->noacl = o->noacl;
	if (o->upperdir || o->workdir || o->idmap) {
		cfsd_log(FUSE_LOG_ERR, "%s=%s: a writable layer or an ID mapping is an overlayfs feature "
			 "composefs-fuse does not offer (put an overlay on top of the mount instead)\n",
			 o->upperdir ? "upperdir" : o->workdir ? "workdir" : "idmap",
			 o->upperdir ? o->upperdir : o->workdir ? o->workdir : o->idmap);
		return -EINVAL;
	}
	r = parse_choice("passthrough", o->passthrough, cfsd_passthrough_names,
			 ARRAY_SIZE(cfsd_passthrough_names));
	if (r < 0)
		return r;
	d->passthrough = (enum cfsd_passthrough)r;
	r = parse_choice("io", o->io, io_names, ARRAY_SIZE(io_names));
	if (r < 0)
		return r;
	co->io = (enum cfs_io_backend)r;
	r = parse_choice("xattrs", o->xattrs, cfsd_xattrs_names, ARRAY_SIZE(cfsd_xattrs_names));
	if (r < 0)
		return r;
	d->xattrs = (enum cfsd_xattrs)r;
	{
		/* Off by default: it halves cold metadata walks but serves each
		 * CPU's reads on one thread, which slows cold data reads
		 * (README, "Performance"). */
		static const char *const uring_names[] = { "off", "auto" };

		r = parse_choice("uring", o->uring, uring_names, ARRAY_SIZE(uring_names));
		if (r < 0)
			return r;
		d->uring = r == 1;
	}
	if (o->tree_cache_size && parse_size(o->tree_cache_size, &co->tree_cache_bytes) < 0) {
		cfsd_log(FUSE_LOG_ERR, "tree_cache_size=%s: not a size\n", o->tree_cache_size);
		return -EINVAL;
	}
	/* The library reads 0 as "the default": say so rather than mean it. */
	if (o->tree_cache_size && co->tree_cache_bytes == 0) {
		cfsd_log(FUSE_LOG_ERR, "tree_cache_size=%s: must be more than 0 (trees of objects "
			 "being read are always kept; the bound is for the others)\n", o->tree_cache_size);
		return -EINVAL;
	}
	if (o->threads) {
		uint64_t n;
		/* A count of worker threads, not a size: no suffixes, 1..1024. */
		if (parse_size(o->threads, &n) < 0 || strpbrk(o->threads, "kKmMgG") || n < 1 ||
		    n > CFSD_MAX_THREADS) {
			cfsd_log(FUSE_LOG_ERR, "threads=%s: expected a number from 1 to %d\n",
				o->threads, CFSD_MAX_THREADS);
			return -EINVAL;
		}
		d->max_threads = (unsigned)n;
	}
	if (o->timeout) {
		char *end;
		d->timeout = strtod(o->timeout, &end);
		if (*end || !(d->timeout >= 0)) {
			cfsd_log(FUSE_LOG_ERR, "timeout=%s: not a number of seconds\n", o->timeout);
			return -EINVAL;
		}
	}
	co->verify = d->verity != CFSD_VERITY_OFF;
	/* The store refuses an object without a digest (-ENOKEY): one place
	 * decides, files.c only names the file in the log. */
	co->require_digest = d->verity == CFSD_VERITY_REQUIRE;
	return 0;
}

struct options;
static int check_digest(struct cfsd *d, const char *image, const struct options *o);

static void *scan_thread(void *p)
{
	(void)cfsd_scan_xattrs(p); /* a corrupt image: every request answered */
	return NULL;
}

/* Read the image into memory the daemon owns, so that later changes to the
 * file cannot change what is served, and check its digest there. */
static int load_image(struct cfsd *d, const char *image, const struct options *o)
{
	_cleanup_close_ int fd = -EBADF;
	struct cfs_img_diag diag;
	pthread_t scan;
	bool scanning;
	int r;

	fd = open(image, O_RDONLY | O_CLOEXEC);
	if (fd < 0) {
		r = -errno;
		cfsd_log(FUSE_LOG_ERR, "image '%s': %s\n", image, strerror(-r));
		return r;
	}
	/* The reader names what is wrong (the corrupt structure, or the
	 * refused incompat features), so the message says more than errno. */
	r = cfs_img_open_fd_ex(fd, 0, &diag, &d->img);
	if (r < 0) {
		cfsd_log(FUSE_LOG_ERR, "image '%s': %s\n", image,
			diag.reason[0] ? diag.reason : strerror(-r));
		return r;
	}
	cfs_img_get_info(d->img, &d->info);
	d->image_fd = steal_fd(&fd);
	/* The walk for xattrs and ACLs runs beside the digest check (half of
	 * the mount time each, on a large image); its answer is used only if
	 * the digest matches. */
	scanning = pthread_create(&scan, NULL, scan_thread, d) == 0;
	if (!scanning)
		(void)cfsd_scan_xattrs(d);
	r = check_digest(d, image, o);
	if (scanning)
		pthread_join(scan, NULL);
	return r;
}

/* An fs-verity signature over the image's digest, by a key of @certs. */
static int check_signature(const char *image, const uint8_t digest[CFS_DIGEST_SIZE], const uint8_t *bytes,
			   size_t size, const char *sig_path, const char *certs)
{
	char reason[512] = "";
	int r;

	if (!certs) {
		cfsd_log(FUSE_LOG_ERR, "signature= needs cert=FILE[:FILE...], the certificates "
				"to trust\n");
		return -EINVAL;
	}
	r = cfs_signature_verify_file(sig_path, certs, digest, bytes, size, reason, sizeof(reason));
	if (r < 0) {
		cfsd_log(FUSE_LOG_ERR, "image '%s': signature '%s' refused: %s\n", image, sig_path,
			reason[0] ? reason : strerror(-r));
		return r;
	}
	cfsd_log(FUSE_LOG_NOTICE, "image '%s': signature '%s' verified\n", image, sig_path);
	return 0;
}

static int check_digest(struct cfsd *d, const char *image, const struct options *o)
{
	uint8_t want[CFS_DIGEST_SIZE], got[CFS_DIGEST_SIZE];
	char hex[2 * CFS_DIGEST_SIZE + 1];
	size_t size;
	const uint8_t *bytes = cfs_img_bytes(d->img, &size);
	int r;

	if (!o->digest && !o->signature) {
		if (o->cert) {
			cfsd_log(FUSE_LOG_ERR, "cert= is only used with signature=FILE\n");
			return -EINVAL;
		}
		return 0;
	}
	if (o->digest && cfs_digest_from_hex(o->digest, want) < 0) {
		cfsd_log(FUSE_LOG_ERR, "digest=%s: expected 64 hex digits\n", o->digest);
		return -EINVAL;
	}
	r = cfs_fsverity_digest_mem(bytes, size, got);
	if (r < 0) {
		cfsd_log(FUSE_LOG_ERR, "image '%s': computing its digest: %s\n", image, strerror(-r));
		return -EINVAL;
	}
	if (o->digest && memcmp(want, got, sizeof(want)) != 0) {
		cfs_digest_to_hex(got, hex);
		cfsd_log(FUSE_LOG_ERR, "image '%s': fs-verity digest %s does not match "
				"digest=%s\n", image, hex, o->digest);
		return -EINVAL;
	}
	/* Both may be given: both must hold. */
	if (o->signature)
		return check_signature(image, got, bytes, size, o->signature, o->cert) < 0 ? -EINVAL : 0;
	return 0;
}

/* Undo the octal escapes of /proc/self/mountinfo (\040 for a space...). */
static void unescape_octal(char *s)
{
	char *w = s;

	for (; *s; s++) {
		if (s[0] == '\\' && s[1] >= '0' && s[1] <= '3' && s[2] >= '0' && s[2] <= '7' &&
		    s[3] >= '0' && s[3] <= '7') {
			*w++ = (char)((s[1] - '0') << 6 | (s[2] - '0') << 3 | (s[3] - '0'));
			s += 3;
		} else {
			*w++ = *s;
		}
	}
	*w = '\0';
}

/* Is the topmost mount on @abs (an absolute path) one of ours? */
static bool is_our_mount(const char *abs)
{
	_cleanup_fclose_ FILE *f = fopen("/proc/self/mountinfo", "re");
	_cleanup_free_ char *line = NULL;
	size_t cap = 0;
	bool ours = false;

	if (!f)
		return false;
	while (getline(&line, &cap, f) > 0) {
		char *save = NULL, *mp = NULL, *sep = strstr(line, " - "), *tok;
		int i = 0;

		if (!sep)
			continue;
		for (tok = strtok_r(line, " ", &save); tok && i < 4; tok = strtok_r(NULL, " ", &save))
			i++;
		mp = tok;
		if (!mp || mp > sep)
			continue;
		unescape_octal(mp);
		if (strcmp(mp, abs) != 0)
			continue;
		/* The last mount on the path wins: the one a lookup meets. */
		ours = strncmp(sep + 3, "fuse.composefs-fuse ", 20) == 0;
	}
	return ours;
}

/*
 * A daemon killed without unmounting (SIGKILL, a crash) leaves a dead mount
 * that answers ENOTCONN; a restart (Restart=on-failure) would stack a second
 * mount on it.  A dead mount of ours is detached and replaced, with a
 * warning; anything else on the mountpoint is left alone.
 */
static int replace_dead_mount(const char *mnt)
{
	_cleanup_free_ char *abs = NULL, *fusermount = NULL;
	char cwd[PATH_MAX];
	int status;
	pid_t pid;

	if (mnt[0] == '/')
		abs = strdup(mnt);
	else if (getcwd(cwd, sizeof(cwd)))
		(void)asprintf(&abs, "%s/%s", cwd, mnt);
	if (!abs)
		return -ENOMEM;
	for (size_t n = strlen(abs); n > 1 && abs[n - 1] == '/'; n--)
		abs[n - 1] = '\0';
	if (!is_our_mount(abs))
		return -ENOTCONN;
	cfsd_log(FUSE_LOG_WARNING, "mountpoint '%s': a dead composefs-fuse mount (its daemon died); "
		 "replacing it\n", mnt);
	if (geteuid() == 0)
		return umount2(abs, MNT_DETACH) < 0 ? -errno : 0;
	/* An ordinary user's own mount: fusermount3 may unmount it. */
	fusermount = find_in_path("fusermount3");
	if (!fusermount)
		return -ENOENT;
	pid = fork();
	if (pid < 0)
		return -errno;
	if (pid == 0) {
		char *argv[] = { "fusermount3", "-u", "-z", "-q", "--", abs, NULL };
		execv(fusermount, argv);
		_exit(127);
	}
	while (waitpid(pid, &status, 0) < 0)
		if (errno != EINTR)
			return -errno;
	return WIFEXITED(status) && WEXITSTATUS(status) == 0 ? 0 : -EBUSY;
}

static int check_mountpoint(const char *mnt)
{
	struct statfs sfs;
	struct stat st;
	int r;

	if (strncmp(mnt, "/dev/fd/", 8) == 0)
		return 0; /* a /dev/fuse descriptor from a parent that mounts */
	/* statfs() always asks the filesystem (a stat() of a dead FUSE
	 * mount's root may be answered from the attribute cache). */
	if (statfs(mnt, &sfs) < 0 || stat(mnt, &st) < 0) {
		r = -errno;
		if (r == -ENOTCONN) {
			r = replace_dead_mount(mnt);
			if (r < 0) {
				cfsd_log(FUSE_LOG_ERR, "mountpoint '%s': a dead FUSE mount %s\n", mnt,
					 r == -ENOTCONN ? "not made by composefs-fuse (umount -l it first)" :
							  "that could not be unmounted");
				return r;
			}
			r = stat(mnt, &st) < 0 ? -errno : 0;
		}
		if (r < 0) {
			cfsd_log(FUSE_LOG_ERR, "mountpoint '%s': %s\n", mnt, strerror(-r));
			return r;
		}
	}
	if (!S_ISDIR(st.st_mode)) {
		cfsd_log(FUSE_LOG_ERR, "mountpoint '%s': not a directory\n", mnt);
		return -ENOTDIR;
	}
	return 0;
}

/* Read-only, permissions checked by the kernel (as overlayfs does), the
 * image as the source, allow_other for root (unless private), auto_unmount
 * for ordinary users; then the
 * mountpoint, for fuse_parse_cmdline(). */
static int add_mount_options(struct fuse_args *args, const char *image, const char *mnt,
			     bool auto_unmount, bool allow_other)
{
	_cleanup_free_ char *escaped = NULL, *fsname = NULL;

	if (fuse_opt_add_arg(args, "-oro,default_permissions,subtype=composefs-fuse") < 0 ||
	    (allow_other && fuse_opt_add_arg(args, "-oallow_other") < 0) ||
	    fuse_opt_add_opt_escaped(&escaped, image) < 0 ||
	    asprintf(&fsname, "-ofsname=%s", escaped) < 0 || fuse_opt_add_arg(args, fsname) < 0 ||
	    (auto_unmount && fuse_opt_add_arg(args, "-oauto_unmount") < 0) ||
	    fuse_opt_add_arg(args, mnt) < 0)
		return -ENOMEM;
#if FUSE_MAJOR_VERSION == 3 && FUSE_MINOR_VERSION >= 18
	/* libfuse 3.18 and later serve FUSE over io_uring themselves (and
	 * fall back to /dev/fuse): uring.c is only for 3.14. */
	if (cfsd_global->uring && fuse_opt_add_arg(args, "-oio_uring") < 0)
		return -ENOMEM;
#endif
	return 0;
}

/* Returns 0 on unmount, the signal number after SIGTERM/SIGINT/SIGHUP, or
 * -errno. */
static int run_loop(struct fuse_session *se, const struct fuse_cmdline_opts *cl)
{
	struct fuse_loop_config *cfg;
	int r;

	if (cl->singlethread)
		return fuse_session_loop(se);
	cfg = fuse_loop_cfg_create();
	if (!cfg)
		return -ENOMEM;
	fuse_loop_cfg_set_clone_fd(cfg, (unsigned)cl->clone_fd);
	fuse_loop_cfg_set_max_threads(cfg, cl->max_threads);
	if (cl->max_idle_threads != UINT_MAX)
		fuse_loop_cfg_set_idle_threads(cfg, cl->max_idle_threads);
	r = fuse_session_loop_mt(se, cfg);
	fuse_loop_cfg_destroy(cfg);
	return r;
}

int main(int argc, char *argv[])
{
	struct fuse_args args = FUSE_ARGS_INIT(argc, argv);
	struct options o = { 0 };
	struct fuse_cmdline_opts cl = { 0 };
	struct cfs_cas_options co = { .verify = true, .io = CFS_IO_AUTO };
	_cleanup_free_ char *basedirs = NULL, *tree_cache = NULL;
	const char *image, *mnt;
	struct cfsd d = { .timeout = 86400.0, .image_fd = -1 };
	bool mounted = false, sig_installed = false;
	int r, ret = 1;

	cfsd_global = &d;
	cfsd_log_init();
	if (fuse_opt_parse(&args, &o, cfsd_opts, opt_proc) < 0)
		goto out_args;

	if (o.help) {
		usage(argv[0]);
		printf("FUSE options:\n");
		fuse_cmdline_help();
		fuse_lowlevel_help();
		ret = 0;
		goto out_args;
	}
	if (o.version) {
		printf("composefs-fuse %s (libfuse %s, passthrough: %s)\n", PACKAGE_VERSION,
		       fuse_pkgversion(), HAVE_FUSE_PASSTHROUGH ? "libfuse API" : "custom-io shim");
		ret = 0;
		goto out_args;
	}

	/* IMAGE MOUNTPOINT, or source=IMAGE and MOUNTPOINT. */
	if (o.n_positional == 2 && !o.source) {
		image = o.positional[0];
		mnt = o.positional[1];
	} else if (o.n_positional == 1 && o.source) {
		image = o.source;
		mnt = o.positional[0];
	} else {
		cfsd_log(FUSE_LOG_ERR, "expected IMAGE MOUNTPOINT (or -o source=IMAGE "
				"MOUNTPOINT); see --help\n");
		goto out_args;
	}

	if (apply_options(&o, &d, &co) < 0)
		goto out_args;

	if (load_image(&d, image, &o) < 0)
		goto out_img;

	if (o.basedir && resolve_basedirs(o.basedir, &basedirs) < 0)
		goto out_img;

	if (check_mountpoint(mnt) < 0)
		goto out_img;

	if (o.tree_cache && !strcmp(o.tree_cache, "none")) {
		tree_cache = NULL;
	} else if (o.tree_cache) {
		tree_cache = absolute_path(o.tree_cache);
		if (!tree_cache) {
			cfsd_log(FUSE_LOG_ERR, "tree_cache '%s': %m\n", o.tree_cache);
			goto out_img;
		}
	} else if (default_tree_cache(&tree_cache) < 0) {
		goto out_img;
	}
	co.tree_cache_dir = tree_cache;
	co.max_idle_objects = setup_fd_limit(d.max_threads);

	/* Open the store before mounting so that its errors stop us here.
	 * A daemon opens it again after fork(): io_uring rings and threads do
	 * not survive fork. */
	if (basedirs && open_cas_first(&d, basedirs, &co, o.tree_cache != NULL) < 0)
		goto out_img;

	/* Root's mount serves everyone, as the kernel's composefs mount does
	 * (default_permissions: the kernel checks modes and ACLs). */
	if (add_mount_options(&args, image, mnt, geteuid() != 0 && !o.noauto_unmount,
			      geteuid() == 0 && !o.private_mount) < 0)
		goto out_cas;
	if (fuse_parse_cmdline(&args, &cl) != 0)
		goto out_cas;
	if (d.max_threads)
		cl.max_threads = d.max_threads;
	d.single_thread = cl.singlethread || cl.max_threads == 1;

	d.notify = getenv("NOTIFY_SOCKET") != NULL;
	if (cfsd_files_new(&d) < 0)
		goto out_cas;
	d.se = fuse_session_new(&args, &cfsd_ops, sizeof(cfsd_ops), &d);
	if (!d.se)
		goto out_cas; /* libfuse printed why (e.g. an unknown option) */
	if (fuse_set_signal_handlers(d.se) != 0)
		goto out_session;
	sig_installed = true;
	/* Started before mounting, so that no moment exists where the mount is
	 * up and nothing would clean it up; it outlives fuse_daemonize()'s
	 * parent because the daemon inherits its pipe. */
	if (geteuid() != 0 && !o.noauto_unmount && strncmp(cl.mountpoint, "/dev/fd/", 8) != 0) {
		r = start_unmount_watchdog(cl.mountpoint);
		if (r < 0)
			cfsd_log(FUSE_LOG_WARNING, "auto_unmount watchdog: %s\n", strerror(-r));
	}
	if (fuse_session_mount(d.se, cl.mountpoint) != 0) {
		cfsd_log(FUSE_LOG_ERR, "cannot mount on '%s'\n", cl.mountpoint);
		goto out_session;
	}
	mounted = true;

	/* The custom-io shim: passthrough and FUSE over io_uring both need it. */
	if (d.passthrough != CFSD_PT_OFF || d.uring) {
		r = cfsd_pt_setup(&d, d.se);
		if (r < 0 && r != -EOPNOTSUPP)
			cfsd_log(FUSE_LOG_WARNING, "passthrough unavailable: %s\n", strerror(-r));
	}

	if (!cl.foreground) {
		d.cas = cfs_cas_unref(d.cas);
		if (fuse_daemonize(0) != 0)
			goto out_unmount;
		cfsd_log_to_syslog();
		if (basedirs && open_cas(&d, basedirs, &co) < 0)
			goto out_unmount;
	}

	if (geteuid() == 0 && !o.keep_caps) {
		r = drop_privileges();
		if (r < 0)
			cfsd_log(FUSE_LOG_WARNING, "cannot drop capabilities: %s\n", strerror(-r));
	}

	pthread_mutex_lock(&stats_lock);
	stats_path = o.stats_file;
	stats_d = &d;
	pthread_mutex_unlock(&stats_lock);
	if (stats_path) {
		pthread_t t;
		sigset_t set;
		sigemptyset(&set);
		sigaddset(&set, SIGUSR1);
		pthread_sigmask(SIG_BLOCK, &set, NULL);
		if (pthread_create(&t, NULL, stats_thread, NULL) == 0)
			pthread_detach(t);
	}

	cfsd_log(FUSE_LOG_NOTICE,
		 "serving '%s' on '%s': format %u, %llu inodes, verity=%s, passthrough=%s (%s), "
		 "io=%s, tree cache %s, xattrs: %s\n",
		 image, cl.mountpoint, d.info.composefs_version, (unsigned long long)d.info.inodes,
		 cfsd_verity_name(d.verity), cfsd_passthrough_name(d.passthrough),
		 cfsd_pt_describe(), d.cas ? cfs_cas_io_backend(d.cas) : "none",
		 d.cas && co.tree_cache_dir ? co.tree_cache_dir : "off",
		 !d.image_has_xattrs && d.xattrs == CFSD_XATTRS_AUTO ? "none in the image (not asked for)" :
		 d.image_has_acls ? "served, with POSIX ACLs" : "served");

	r = run_loop(d.se, &cl);
	/* 0 on unmount, the signal number on SIGTERM/SIGINT/SIGHUP. */
	if (r < 0)
		cfsd_log(FUSE_LOG_ERR, "session loop failed: %s\n", strerror(-r));
	else
		ret = 0;
	if (d.notify) {
		(void)cfsd_notify("STOPPING=1");
		cfsd_notify_status(&d, "stopping");
	}
	stop_stats(true);

out_unmount:
	stop_stats(false);
	if (mounted)
		fuse_session_unmount(d.se);
	cfsd_uring_stop(); /* its threads end with the connection */
	cfsd_files_stop(&d);
out_session:
	if (sig_installed)
		fuse_remove_signal_handlers(d.se);
	fuse_session_destroy(d.se);
out_cas:
	cfsd_files_free(&d);
	d.cas = cfs_cas_unref(d.cas);
out_img:
	d.img = cfs_img_unref(d.img);
	if (d.image_fd >= 0)
		close(d.image_fd);
out_args:
	free(cl.mountpoint);
	fuse_opt_free_args(&args);
	for (int i = 0; i < o.n_positional; i++)
		free(o.positional[i]);
	free(o.source);
	free(o.basedir);
	free(o.digest);
	free(o.verity);
	free(o.passthrough);
	free(o.tree_cache);
	free(o.tree_cache_size);
	free(o.threads);
	free(o.xattrs);
	free(o.signature);
	free(o.cert);
	free(o.uring);
	free(o.upperdir);
	free(o.workdir);
	free(o.idmap);
	free(o.io);
	free(o.stats_file);
	free(o.timeout);
	return ret;
}
