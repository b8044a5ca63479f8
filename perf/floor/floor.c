/*
 * floor: the cheapest UDP SIP responder this harness can think of, as a
 * lower bound ("floor") for CPU per request. perf/compare.sh compiles it at
 * run time:  cc -O2 -o floor floor.c
 *
 *   floor PORT [WORKERS] [RCVBUF_BYTES]       (binds 127.0.0.1:PORT)
 *
 * One UDP socket; WORKERS processes (fork) share it, each a blocking loop:
 * recvmmsg (up to 32 datagrams), per request copy the Via / From / To /
 * Call-ID / CSeq header lines (full or compact names, in their order) under
 * "SIP/2.0 200 OK" (a REGISTER without Authorization: "401" plus a fixed
 * WWW-Authenticate, so `sipshard bench register` completes against it), add
 * "Content-Length: 0", one sendmmsg to the sources. No SIP parsing beyond
 * finding those header lines, no script, no state, no auth check. Replies (datagrams starting
 * with "SIP/") are ignored. Children die with the parent (PR_SET_PDEATHSIG);
 * SIGTERM/SIGINT to the parent ends everything.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#define BUF 65536

static const char STATUS[] = "SIP/2.0 200 OK\r\n";
static const char STATUS401[] = "SIP/2.0 401 OK\r\n"; /* reason kept 2 chars: same length */
static const char CHALLENGE[] = "WWW-Authenticate: Digest realm=\"127.0.0.1\", nonce=\"0123456789abcdef0123456789abcdef\", qop=\"auth\", algorithm=MD5\r\n";
static const char TAIL[] = "Content-Length: 0\r\n\r\n";

/* Is the header line [p, p+n) one of the headers a reply copies? */
static int copied(const char *p, size_t n)
{
	static const char *names[] = {"via", "v", "from", "f", "to", "t",
		"call-id", "i", "cseq", NULL};
	size_t k = 0;
	while (k < n && p[k] != ':' && p[k] != ' ' && p[k] != '\t')
		k++;
	for (int i = 0; names[i]; i++)
		if (strlen(names[i]) == k && strncasecmp(p, names[i], k) == 0)
			return 1;
	return 0;
}

/* Builds the reply to the request in[0, n) into out; returns its length,
 * or 0 for a datagram that gets no reply (a reply, or no header end). A
 * REGISTER without Authorization gets 401 with a fixed challenge, anything
 * else 200: the cheapest answer `sipshard bench register` accepts. */
static size_t answer(const char *in, size_t n, char *out, size_t cap)
{
	if (n >= 4 && memcmp(in, "SIP/", 4) == 0)
		return 0;
	const char *p = memchr(in, '\n', n);
	const char *end = in + n;
	if (!p)
		return 0;
	p++;
	int reg = n >= 9 && memcmp(in, "REGISTER ", 9) == 0, authz = 0;
	size_t o = sizeof(STATUS) - 1;
	memcpy(out, STATUS, o);
	while (p < end) {
		const char *nl = memchr(p, '\n', (size_t)(end - p));
		size_t len = nl ? (size_t)(nl - p + 1) : (size_t)(end - p);
		if (len <= 2 && (*p == '\r' || *p == '\n'))
			break; /* end of headers */
		if (reg && len > 14 && strncasecmp(p, "authorization:", 14) == 0)
			authz = 1;
		if (copied(p, len) && o + len + sizeof(CHALLENGE) + sizeof(TAIL) < cap) {
			memcpy(out + o, p, len);
			o += len;
		}
		p += len;
	}
	if (reg && !authz) {
		memcpy(out, STATUS401, sizeof(STATUS401) - 1); /* same length as STATUS */
		memcpy(out + o, CHALLENGE, sizeof(CHALLENGE) - 1);
		o += sizeof(CHALLENGE) - 1;
	}
	memcpy(out + o, TAIL, sizeof(TAIL) - 1);
	return o + sizeof(TAIL) - 1;
}

#define BATCH 32

/* recvmmsg (blocking for the first datagram, then whatever is queued, up to
 * BATCH), one reply each, one sendmmsg: the batching sipshard's shards do,
 * so the floor is not handicapped by a syscall per datagram. */
static void serve(int fd)
{
	static char in[BATCH][BUF / 8], out[BATCH][4096];
	static struct sockaddr_in src[BATCH];
	static struct iovec iin[BATCH], iout[BATCH];
	static struct mmsghdr rm[BATCH], sm[BATCH];
	for (int i = 0; i < BATCH; i++) {
		iin[i].iov_base = in[i];
		iin[i].iov_len = sizeof(in[i]);
		rm[i].msg_hdr.msg_iov = &iin[i];
		rm[i].msg_hdr.msg_iovlen = 1;
	}
	for (;;) {
		for (int i = 0; i < BATCH; i++) {
			rm[i].msg_hdr.msg_name = &src[i];
			rm[i].msg_hdr.msg_namelen = sizeof(src[i]);
		}
		int got = recvmmsg(fd, rm, BATCH, MSG_WAITFORONE, NULL);
		if (got <= 0)
			continue;
		int k = 0;
		for (int i = 0; i < got; i++) {
			size_t o = answer(in[i], rm[i].msg_len, out[k], sizeof(out[k]));
			if (!o)
				continue;
			iout[k].iov_base = out[k];
			iout[k].iov_len = o;
			memset(&sm[k], 0, sizeof(sm[k]));
			sm[k].msg_hdr.msg_iov = &iout[k];
			sm[k].msg_hdr.msg_iovlen = 1;
			sm[k].msg_hdr.msg_name = &src[i];
			sm[k].msg_hdr.msg_namelen = rm[i].msg_hdr.msg_namelen;
			k++;
		}
		for (int s = 0; s < k;) {
			int r = sendmmsg(fd, sm + s, (unsigned)(k - s), 0);
			if (r <= 0)
				break;
			s += r;
		}
	}
}

int main(int argc, char **argv)
{
	if (argc < 2) {
		fprintf(stderr, "usage: %s PORT [WORKERS] [RCVBUF_BYTES]\n", argv[0]);
		return 2;
	}
	int port = atoi(argv[1]);
	int workers = argc > 2 ? atoi(argv[2]) : 2;
	int rcvbuf = argc > 3 ? atoi(argv[3]) : 4194304;
	if (port <= 0 || port > 65535 || workers < 1 || workers > 64) {
		fprintf(stderr, "bad arguments\n");
		return 2;
	}
	int fd = socket(AF_INET, SOCK_DGRAM, 0);
	if (fd < 0) {
		perror("socket");
		return 1;
	}
	if (rcvbuf > 0) {
		setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof(rcvbuf));
		setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &rcvbuf, sizeof(rcvbuf));
	}
	struct sockaddr_in a;
	memset(&a, 0, sizeof(a));
	a.sin_family = AF_INET;
	a.sin_port = htons((unsigned short)port);
	a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	if (bind(fd, (struct sockaddr *)&a, sizeof(a)) < 0) {
		perror("bind");
		return 1;
	}
	pid_t parent = getpid();
	for (int i = 1; i < workers; i++) {
		pid_t c = fork();
		if (c < 0) {
			perror("fork");
			return 1;
		}
		if (c == 0) {
			prctl(PR_SET_PDEATHSIG, SIGTERM);
			if (getppid() != parent)
				_exit(0);
			serve(fd);
		}
	}
	fprintf(stderr, "floor listening on 127.0.0.1:%d, %d processes\n", port, workers);
	serve(fd);
	return 0;
}
