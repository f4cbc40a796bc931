/* bench/splice_relay.c: the floor for any user-space relay, for bench/passthrough.
 *
 * Listens on 127.0.0.1:LISTEN_PORT; for each client it connects to 127.0.0.1:UPSTREAM_PORT and
 * moves bytes both ways with splice(2) through a pipe, one blocking thread a direction. No HTTP,
 * no parsing, no timeouts: what a relay costs when it does nothing but the second loopback TCP
 * hop. Not a proxy to use: a reference measured in the same run as accel-proxy and nginx.
 *
 * Usage: splice_relay LISTEN_PORT UPSTREAM_PORT
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <unistd.h>

struct link {
  int client, upstream;
  atomic_int directions_left; /* the last direction to finish closes both sockets */
};

struct direction {
  struct link *link;
  int from, to;
};

static void *pump(void *arg) {
  struct direction d = *(struct direction *)arg;
  free(arg);
  int p[2];
  if (pipe(p) == 0) {
    fcntl(p[1], F_SETPIPE_SZ, 1 << 20);
    for (;;) {
      ssize_t n = splice(d.from, NULL, p[1], NULL, 1 << 20, SPLICE_F_MOVE);
      if (n <= 0) break;
      while (n > 0) {
        ssize_t m = splice(p[0], NULL, d.to, NULL, (size_t)n, SPLICE_F_MOVE);
        if (m <= 0) goto done;
        n -= m;
      }
    }
  done:
    close(p[0]);
    close(p[1]);
  }
  shutdown(d.to, SHUT_WR);
  if (atomic_fetch_sub(&d.link->directions_left, 1) == 1) {
    close(d.link->client);
    close(d.link->upstream);
    free(d.link);
  }
  return NULL;
}

static void start(struct link *l, int from, int to) {
  struct direction *d = malloc(sizeof *d);
  pthread_t t;
  d->link = l;
  d->from = from;
  d->to = to;
  if (pthread_create(&t, NULL, pump, d) == 0) pthread_detach(t);
}

static struct sockaddr_in loopback(int port) {
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  return a;
}

int main(int argc, char **argv) {
  if (argc != 3) {
    fprintf(stderr, "usage: splice_relay LISTEN_PORT UPSTREAM_PORT\n");
    return 2;
  }
  struct sockaddr_in listen_at = loopback(atoi(argv[1])), upstream_at = loopback(atoi(argv[2]));
  int one = 1, s = socket(AF_INET, SOCK_STREAM, 0);
  setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  if (bind(s, (struct sockaddr *)&listen_at, sizeof listen_at) != 0 || listen(s, 512) != 0) {
    perror("splice_relay: listen");
    return 1;
  }
  for (;;) {
    int c = accept(s, NULL, NULL);
    if (c < 0) continue;
    int u = socket(AF_INET, SOCK_STREAM, 0);
    if (connect(u, (struct sockaddr *)&upstream_at, sizeof upstream_at) != 0) {
      close(c);
      close(u);
      continue;
    }
    setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    setsockopt(u, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    struct link *l = malloc(sizeof *l);
    l->client = c;
    l->upstream = u;
    atomic_init(&l->directions_left, 2);
    start(l, c, u);
    start(l, u, c);
  }
}
