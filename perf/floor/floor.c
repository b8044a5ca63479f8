/*
 * floor: the cheapest UDP SIP responder this harness can think of, as a
 * lower bound ("floor") for CPU per request. perf/compare.sh compiles it at
 * run time:  cc -O2 -o floor floor.c
 *
 *   floor PORT [WORKERS] [RCVBUF_BYTES]       (binds 127.0.0.1:PORT)
 *
 * One UDP socket; WORKERS processes (fork) share it, each a blocking loop:
 * recvfrom, copy the Via / From / To / Call-ID / CSeq header lines (full
 * or compact names, in their order) under "SIP/2.0 200 OK", add
 * "Content-Length: 0", sendto the source. No SIP parsing beyond finding
 * those header lines, no script, no state. Replies (datagrams starting
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

static void serve(int fd)
{
	static char in[BUF], out[BUF];
	struct sockaddr_in src;
	for (;;) {
		socklen_t sl = sizeof(src);
		ssize_t n = recvfrom(fd, in, sizeof(in), 0, (struct sockaddr *)&src, &sl);
		if (n <= 0)
			continue;
		if (n >= 4 && memcmp(in, "SIP/", 4) == 0)
			continue;
		size_t o = sizeof(STATUS) - 1;
		memcpy(out, STATUS, o);
		/* skip the request line, then walk header lines to the blank line */
		const char *p = memchr(in, '\n', (size_t)n);
		const char *end = in + n;
		if (!p)
			continue;
		p++;
		while (p < end) {
			const char *nl = memchr(p, '\n', (size_t)(end - p));
			size_t len = nl ? (size_t)(nl - p + 1) : (size_t)(end - p);
			if (len <= 2 && (*p == '\r' || *p == '\n'))
				break; /* end of headers */
			if (copied(p, len) && o + len + sizeof(TAIL) < sizeof(out)) {
				memcpy(out + o, p, len);
				o += len;
			}
			p += len;
		}
		memcpy(out + o, TAIL, sizeof(TAIL) - 1);
		o += sizeof(TAIL) - 1;
		sendto(fd, out, o, 0, (struct sockaddr *)&src, sl);
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
