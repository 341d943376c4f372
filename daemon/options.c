/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * composefs-fuse's options (options.h): the -o table, --help, the checks
 * and conversions of each value into the daemon and its store, and the
 * defaults that depend on who runs it (the tree cache directory).
 */
#include "config.h"

#include <errno.h>
#include <limits.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cfs-tools.h"
#include "cfsd.h"
#include "options.h"

#define OPT(t, p) { t, offsetof(struct cfsd_options, p), 1 }
const struct fuse_opt cfsd_opts[] = {
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

int cfsd_opt_proc(void *data, const char *arg, int key, struct fuse_args *outargs)
{
	struct cfsd_options *o = data;

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

void cfsd_usage(const char *prog)
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
int cfsd_resolve_basedirs(const char *list, char **ret_list)
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
char *cfsd_absolute_path(const char *path)
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
int cfsd_default_tree_cache(char **ret_dir)
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
int cfsd_apply_options(const struct cfsd_options *o, struct cfsd *d, struct cfs_cas_options *co)
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
