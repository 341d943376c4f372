/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * fs-verity built-in signatures, checked in userspace: a detached PKCS#7
 * SignedData in DER (what `fsverity sign` writes and the kernel checks)
 * whose signed content is the "formatted digest": the 8 bytes "FSVerity",
 * the hash algorithm and digest size (le16 each), then the file's fs-verity
 * digest (Documentation/filesystems/fsverity.rst, "Built-in signature
 * verification").  All parsing and cryptography is OpenSSL's; trust comes
 * only from the certificates the caller names.  Signing is libfsverity's.
 */
#include <endian.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <libfsverity.h>
#include <linux/fsverity.h>
#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/pkcs7.h>
#include <openssl/x509.h>
#include <openssl/x509_vfy.h>
#include <openssl/x509v3.h>

#include "cas-internal.h"

#define SIG_MAX_SIZE (64 * 1024)

struct formatted_digest {
	char magic[8];
	__le16 algorithm;
	__le16 size;
	uint8_t digest[64];
} __attribute__((packed));

static size_t format_digest(struct formatted_digest *f, unsigned alg, const uint8_t *digest, size_t size)
{
	memcpy(f->magic, "FSVerity", 8);
	f->algorithm = htole16((uint16_t)alg);
	f->size = htole16((uint16_t)size);
	memcpy(f->digest, digest, size);
	return offsetof(struct formatted_digest, digest) + size;
}

static int reason_set(char *buf, size_t bufsz, int err, const char *fmt, ...) __attribute__((format(printf, 4, 5)));
static int reason_set(char *buf, size_t bufsz, int err, const char *fmt, ...)
{
	va_list ap;

	if (buf && bufsz) {
		va_start(ap, fmt);
		vsnprintf(buf, bufsz, fmt, ap);
		va_end(ap);
	}
	return err;
}

/* The most telling OpenSSL error on the queue (its data names a
 * certificate verification failure), then the queue is cleared. */
static void openssl_reason(char *buf, size_t bufsz)
{
	const char *data = NULL, *best = NULL;
	char tmp[256] = "";
	unsigned long e, last = 0;
	int flags = 0;

	while ((e = ERR_get_error_all(NULL, NULL, NULL, &data, &flags)) != 0) {
		last = e;
		if ((flags & ERR_TXT_STRING) && data && data[0])
			best = data;
		if (best && strncmp(best, "Verify error:", 13) == 0)
			break;
	}
	if (best && strncmp(best, "Verify error:", 13) == 0) {
		snprintf(buf, bufsz, "certificate: %s", best + 13 + (best[13] == ' '));
	} else if (ERR_GET_LIB(last) == ERR_LIB_PKCS7 &&
		   ERR_GET_REASON(last) == PKCS7_R_SIGNER_CERTIFICATE_NOT_FOUND) {
		snprintf(buf, bufsz, "not signed by the key of any certificate given");
	} else if (ERR_GET_LIB(last) == ERR_LIB_PKCS7 && (ERR_GET_REASON(last) == PKCS7_R_SIGNATURE_FAILURE ||
							   ERR_GET_REASON(last) == PKCS7_R_DIGEST_FAILURE)) {
		snprintf(buf, bufsz, "it signs another fs-verity digest (another image, or this one changed)");
	} else if (last) {
		const char *r = ERR_reason_error_string(last);

		snprintf(tmp, sizeof(tmp), "%s", r ? r : "unknown error");
		snprintf(buf, bufsz, "%s%s%s", tmp, best ? ": " : "", best ? best : "");
	} else {
		snprintf(buf, bufsz, "signature does not verify");
	}
	ERR_clear_error();
}

/* PEM or DER certificates from @path (a PEM file may hold several). */
static int load_certs(const char *path, STACK_OF(X509) *out, char *reason, size_t reasonlen)
{
	BIO *bio = BIO_new_file(path, "rb");
	X509 *x;
	int n = 0;

	if (!bio) {
		ERR_clear_error();
		return reason_set(reason, reasonlen, errno ? -errno : -ENOENT, "certificate '%s': %s", path,
				  strerror(errno ? errno : ENOENT));
	}
	while ((x = PEM_read_bio_X509(bio, NULL, NULL, NULL)) != NULL) {
		if (!sk_X509_push(out, x)) {
			X509_free(x);
			BIO_free(bio);
			return -ENOMEM;
		}
		n++;
	}
	ERR_clear_error();
	if (n == 0) {
		(void)BIO_reset(bio);
		x = d2i_X509_bio(bio, NULL);
		if (x && sk_X509_push(out, x))
			n++;
		else
			X509_free(x);
		ERR_clear_error();
	}
	BIO_free(bio);
	if (n == 0)
		return reason_set(reason, reasonlen, -EINVAL, "certificate '%s': not a PEM or DER X.509 certificate",
				  path);
	return 0;
}

/* Does @p7 verify over @content, signed by a certificate chaining to one of
 * @certs?  1 yes, 0 no (reason set), -errno. */
static int verify_content(PKCS7 *p7, STACK_OF(X509) *certs, const void *content, size_t len, char *reason,
			  size_t reasonlen)
{
	X509_STORE *store = X509_STORE_new();
	BIO *mem = BIO_new_mem_buf(content, (int)len);
	/* Not a memory BIO on top: given one, PKCS7_verify() (OpenSSL 3.0)
	 * copies it into a BIO it leaks when the message is malformed. */
	BIO *in = mem ? BIO_push(BIO_new(BIO_f_buffer()), mem) : NULL;
	int ok = -ENOMEM;

	if (!in)
		BIO_free(mem);
	if (store && in) {
		for (int i = 0; i < sk_X509_num(certs); i++)
			X509_STORE_add_cert(store, sk_X509_value(certs, i));
		/* As the kernel's keyring: a given certificate is trusted as
		 * it is (no chain to a root needed), for any key usage; its
		 * validity dates are checked. */
		X509_STORE_set_purpose(store, X509_PURPOSE_ANY);
		X509_STORE_set_flags(store, X509_V_FLAG_PARTIAL_CHAIN);
		/* PKCS7_NOINTERN: the signer must be one of @certs, never a
		 * certificate the signature file brings along. */
		ok = PKCS7_verify(p7, certs, store, in, NULL, PKCS7_BINARY | PKCS7_NOINTERN) == 1;
		if (!ok)
			openssl_reason(reason, reasonlen);
	}
	BIO_free_all(in);
	X509_STORE_free(store);
	ERR_clear_error();
	return ok;
}

/* The fs-verity digest of @data with SHA-512 (for a clear refusal of a
 * signature made with --hash-alg=sha512). */
struct mem_src {
	const uint8_t *p;
	size_t left;
};

static int mem_read(void *fd, void *buf, size_t count)
{
	struct mem_src *m = fd;

	if (count > m->left)
		return -EIO;
	memcpy(buf, m->p, count);
	m->p += count;
	m->left -= count;
	return 0;
}

static bool signed_with_sha512(PKCS7 *p7, STACK_OF(X509) *certs, const void *data, size_t size)
{
	struct libfsverity_merkle_tree_params params = {
		.version = 1,
		.hash_algorithm = FS_VERITY_HASH_ALG_SHA512,
		.file_size = size,
		.block_size = CFS_VERITY_BLOCK_SIZE,
	};
	struct libfsverity_digest *d = NULL;
	struct mem_src src = { .p = data, .left = size };
	struct formatted_digest f;
	char ignored[8];
	size_t len;
	bool yes;

	if (!data || libfsverity_compute_digest(&src, mem_read, &params, &d) != 0)
		return false;
	len = format_digest(&f, FS_VERITY_HASH_ALG_SHA512, d->digest, d->digest_size);
	free(d);
	yes = verify_content(p7, certs, &f, len, ignored, sizeof(ignored)) == 1;
	return yes;
}

int cfs_signature_verify(const void *sig, size_t sig_len, const char *const *cert_paths, size_t n_certs,
			 const uint8_t digest[CFS_DIGEST_SIZE], const void *data, size_t data_size,
			 char *reason, size_t reasonlen)
{
	STACK_OF(X509) *certs = NULL;
	const unsigned char *p = sig;
	PKCS7 *p7 = NULL;
	struct formatted_digest f;
	size_t len;
	int r;

	if (n_certs == 0)
		return reason_set(reason, reasonlen, -EINVAL, "no certificate given to check the signature against");
	if (sig_len == 0 || sig_len > SIG_MAX_SIZE)
		return reason_set(reason, reasonlen, -EBADMSG, "signature: %s",
				  sig_len ? "larger than 64 KiB" : "empty file");
	certs = sk_X509_new_null();
	if (!certs)
		return -ENOMEM;
	for (size_t i = 0; i < n_certs; i++) {
		r = load_certs(cert_paths[i], certs, reason, reasonlen);
		if (r < 0)
			goto out;
	}
	p7 = d2i_PKCS7(NULL, &p, (long)sig_len);
	if (!p7 || p != (const unsigned char *)sig + sig_len) {
		ERR_clear_error();
		r = reason_set(reason, reasonlen, -EBADMSG, "signature: not a DER PKCS#7 message%s",
			       p7 ? " (trailing bytes)" : "");
		goto out;
	}
	if (!PKCS7_type_is_signed(p7)) {
		r = reason_set(reason, reasonlen, -EBADMSG, "signature: PKCS#7 message is not SignedData");
		goto out;
	}
	/* fs-verity signatures carry no content: the digest is given.  (An
	 * attached one also takes a path of PKCS7_verify() that leaks.) */
	if (!PKCS7_get_detached(p7)) {
		r = reason_set(reason, reasonlen, -EBADMSG, "signature: not detached (it carries content)");
		goto out;
	}
	len = format_digest(&f, FS_VERITY_HASH_ALG_SHA256, digest, CFS_DIGEST_SIZE);
	r = verify_content(p7, certs, &f, len, reason, reasonlen);
	if (r == 1) {
		r = 0;
	} else if (r == 0) {
		char why[256];

		snprintf(why, sizeof(why), "%s", reason ? reason : "");
		if (signed_with_sha512(p7, certs, data, data_size))
			r = reason_set(reason, reasonlen, -EOPNOTSUPP,
				       "signed over the SHA-512 fs-verity digest; only SHA-256 is supported");
		else
			r = reason_set(reason, reasonlen, -EKEYREJECTED, "signature not accepted: %s", why);
	}
out:
	PKCS7_free(p7);
	sk_X509_pop_free(certs, X509_free);
	ERR_clear_error();
	return r;
}

int cfs_signature_verify_file(const char *sig_path, const char *cert_list, const uint8_t digest[CFS_DIGEST_SIZE],
			      const void *data, size_t data_size, char *reason, size_t reasonlen)
{
	_cleanup_close_ int fd = -EBADF;
	_cleanup_free_ uint8_t *sig = NULL;
	_cleanup_free_ char *copy = NULL;
	const char *paths[CFS_SIGNATURE_MAX_CERTS];
	size_t n_paths = 0;
	char *save = NULL;
	ssize_t n;

	if (!cert_list)
		return reason_set(reason, reasonlen, -EINVAL, "no certificate given to check the signature against");
	copy = strdup(cert_list);
	if (!copy)
		return -ENOMEM;
	for (char *t = strtok_r(copy, ":", &save); t; t = strtok_r(NULL, ":", &save)) {
		if (n_paths == CFS_SIGNATURE_MAX_CERTS)
			return reason_set(reason, reasonlen, -E2BIG, "more than %d certificate files",
					  CFS_SIGNATURE_MAX_CERTS);
		paths[n_paths++] = t;
	}
	fd = open(sig_path, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
	if (fd < 0)
		return reason_set(reason, reasonlen, -errno, "cannot open it: %s", strerror(errno));
	sig = malloc(SIG_MAX_SIZE + 1);
	if (!sig)
		return -ENOMEM;
	n = cfs_pread_full(fd, sig, SIG_MAX_SIZE + 1, 0);
	if (n < 0)
		return reason_set(reason, reasonlen, (int)n, "cannot read it: %s", strerror((int)-n));
	return cfs_signature_verify(sig, (size_t)n, paths, n_paths, digest, data, data_size, reason, reasonlen);
}

int cfs_signature_sign(const uint8_t digest[CFS_DIGEST_SIZE], const char *key_path, const char *cert_path,
		       uint8_t **ret_sig, size_t *ret_len)
{
	struct libfsverity_signature_params params = { .keyfile = key_path, .certfile = cert_path };
	_cleanup_free_ struct libfsverity_digest *d = malloc(sizeof(*d) + CFS_DIGEST_SIZE);

	if (!d)
		return -ENOMEM;
	d->digest_algorithm = FS_VERITY_HASH_ALG_SHA256;
	d->digest_size = CFS_DIGEST_SIZE;
	memcpy(d->digest, digest, CFS_DIGEST_SIZE);
	return libfsverity_sign_digest(d, &params, ret_sig, ret_len);
}
