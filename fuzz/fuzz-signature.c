/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * libFuzzer target: the input is an fs-verity signature file, checked
 * against a fixed certificate and digest as composefs-fuse -o signature=
 * checks one.  The parsing is OpenSSL's; what is fuzzed is our wrapper
 * around it (lengths, error paths, the SHA-512 probe).  Refusing is fine;
 * crashing, leaking or accepting is not (the seed corpus holds the one
 * valid signature, of the digest below).
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cas.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* A throwaway self-signed test certificate (valid for 100 years), and the
 * digest of the image whose signature is corpus/signature/valid.sig. */
static const char cert_pem[] =
	"-----BEGIN CERTIFICATE-----\n"
	"MIIDHzCCAgegAwIBAgIUR1nGruWEppWzwykdzGOECCPPLH4wDQYJKoZIhvcNAQEL\n"
	"BQAwHjEcMBoGA1UEAwwTY29tcG9zZWZzLWZ1c2UtZnV6ejAgFw0yNjEyMDIwNjE1\n"
	"MDdaGA8yMTI2MTEwODA2MTUwN1owHjEcMBoGA1UEAwwTY29tcG9zZWZzLWZ1c2Ut\n"
	"ZnV6ejCCASIwDQYJKoZIhvcNAQEBBQADggEPADCCAQoCggEBALej86SkaNCa10ZQ\n"
	"gmrki2SSBhzbf3DlNfbobybeLhMQawOM6Zcs/nJkO65IGo9ytJhk5WAlF5eaNcIC\n"
	"tai+SXr23V+L034VJgOKNrZUaCuE3dWVsn5eZLBRpaNeX/i/pSJmUUpxC8UT0ZcE\n"
	"abQnUb84cEfaLibH1K3p+v18O3yb48AaRkknW2UQxmNmBMIsGGEMwL2fMDNVuuMU\n"
	"gs4XhdhAjAZOdPpK+gp5LbPK3HmGe/iwXLC6Jz59KAcGbgzAOpafptYwIcWirRx0\n"
	"65qUA6pM1YmvXqADmYybqUSQCtuYf0mH96MmnhTIwreiK11GkWFSbGAS2IVk18Cj\n"
	"2nCxt/sCAwEAAaNTMFEwHQYDVR0OBBYEFL+RL+wLzPwhFzXUgO5Seoryr74jMB8G\n"
	"A1UdIwQYMBaAFL+RL+wLzPwhFzXUgO5Seoryr74jMA8GA1UdEwEB/wQFMAMBAf8w\n"
	"DQYJKoZIhvcNAQELBQADggEBAF4zSkusrrezzIZPH7IdBrp2WfdZo+6daZK0euDN\n"
	"vqpr7qXEXx8tK7LrCyXIP8FEwnhcW70UEL6Ir72aH6SX7LaHveyZ33dVYJ0g1UlC\n"
	"qmkTMS+yX5oNSxhoBmQ/Hi2ZNaWxY5nYIwQAXmf+hMe9yVchu8Uo+WxvNoaMuVOx\n"
	"tN6OXlX3bl+nYTUbl2nTRdQpYQu+3LkeTkLpHsgVvSh7BJEu2Q7pqzDKxDD1qCbz\n"
	"jdLlS8KWDUt2CNULYByY4ssWYkcCoh1uu2L+GsVU7uvYn+zjk2o0UJ3eQmCJiDSa\n"
	"dh5btlGIh2Dgvdfc4umhZZJL0RrxP00hgcbY6CO540/2514=\n"
	"-----END CERTIFICATE-----\n";
static const char digest_hex[] = "8ec62608000225dcd3e768a68fa8c4debbbf37ce94b552b1826c7aa7b720c86b";

static char cert_path[64];

static void setup(void)
{
	int fd;

	if (cert_path[0])
		return;
	snprintf(cert_path, sizeof(cert_path), "/tmp/fuzz-signature-XXXXXX");
	fd = mkstemp(cert_path);
	if (fd < 0 || write(fd, cert_pem, sizeof(cert_pem) - 1) != (ssize_t)(sizeof(cert_pem) - 1))
		abort();
	close(fd);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	const char *certs[] = { cert_path };
	uint8_t digest[CFS_DIGEST_SIZE];
	char reason[256];
	static const uint8_t image[] = "not the image";
	int r;

	setup();
	if (cfs_digest_from_hex(digest_hex, digest) < 0)
		abort();
	r = cfs_signature_verify(data, size, certs, 1, digest, image, sizeof(image), reason, sizeof(reason));
	if (r < 0 && !reason[0])
		abort(); /* every refusal says why */
	/* Only the real signature verifies. */
	if (r == 0 && size != 413)
		abort();
	/* Any other digest is refused. */
	digest[0] ^= 1;
	if (cfs_signature_verify(data, size, certs, 1, digest, NULL, 0, reason, sizeof(reason)) == 0)
		abort();
	return 0;
}
