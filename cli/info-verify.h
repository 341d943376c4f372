/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * The `composefs-info verify` subcommand, implemented in info-verify.c.
 *
 * composefs-info.c parses the options (getopt_long, so abbreviations such as
 * --thread=4 work as for every other option), opens each IMAGE operand in
 * turn and calls cfs_info_verify() once per image:
 *   @img         the opened, validated image (borrowed; do not unref)
 *   @image_path  the operand as given, for messages
 *   @opts        the options that concern verify (see below)
 * Returns 0 if every object is present and matches its digest, > 0 if some
 * object is missing or corrupt (already reported on stdout/stderr), or a
 * negative errno on failure (composefs-info prints one line for it).
 * composefs-info exits 0 only if every call returned 0.
 */
#pragma once

#include "cfs-image.h"

struct cfs_info_verify_options {
	const char *basedir;    /* --basedir (DIR[:DIR...]), or NULL if none was given */
	const char *tree_cache; /* --tree-cache: NULL for the default, "" for none */
	const char *threads;    /* --threads as given (checked here), or NULL */
};

int cfs_info_verify(struct cfs_image *img, const char *image_path,
		    const struct cfs_info_verify_options *opts);
