/*
 * c_replay_bench: replays one pre-encoded request frame over the agent's UNIX socket, one
 * request in flight, and reads each reply (16-byte header, then the body it announces).
 *
 *     c_replay_bench SOCKET FRAME_FILE ITERATIONS
 *     c_replay_bench --floor REQUEST_BYTES REPLY_BYTES ITERATIONS
 *
 * After connecting and 200 warm-up round trips it prints "ready" and waits for a line on
 * stdin, so that a driver can start several of them at once (benchmarks/bench_concurrency.py);
 * then it prints "p50_ns TOTAL_NS": the median round trip and the time for all ITERATIONS.
 * No client library: the cost measured is the agent's and the socket's.
 *
 * --floor measures what no server can beat: the same round trips over a UNIX socket pair to
 * a forked C process that reads each request and writes a reply of REPLY_BYTES at once (a
 * 16-byte header announcing the rest); it prints the same two figures, without waiting.
 */
#define _GNU_SOURCE
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define WARMUP 200

static int64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static int compare(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

static int read_all(int fd, unsigned char *buf, size_t n)
{
    while (n) {
        ssize_t got = read(fd, buf, n);
        if (got <= 0)
            return -1;
        buf += got;
        n -= (size_t)got;
    }
    return 0;
}

static int round_trip(int fd, const unsigned char *frame, size_t frame_len,
                      unsigned char *reply, size_t reply_cap)
{
    if (send(fd, frame, frame_len, 0) != (ssize_t)frame_len)
        return -1;
    if (read_all(fd, reply, 16) < 0)
        return -1;
    uint32_t body = (uint32_t)reply[12] | (uint32_t)reply[13] << 8 | (uint32_t)reply[14] << 16
                    | (uint32_t)reply[15] << 24;
    uint16_t status = (uint16_t)(reply[6] | reply[7] << 8);
    if (body > reply_cap || read_all(fd, reply, body) < 0)
        return -1;
    if (status != 0) {
        fprintf(stderr, "status %u: %.*s\n", status, (int)body, (const char *)reply);
        return -1;
    }
    return 0;
}

static int floor_run(long request_bytes, long reply_bytes, long iterations)
{
    int pair[2];
    if (request_bytes < 16 || reply_bytes < 16 || request_bytes > (1 << 20)
        || reply_bytes > (1 << 22) || socketpair(AF_UNIX, SOCK_STREAM, 0, pair) < 0)
        return 2;
    static unsigned char request[1 << 20], reply[1 << 22];
    memset(request, 0, sizeof request);
    memset(reply, 0, sizeof reply);
    uint32_t body = (uint32_t)(reply_bytes - 16);
    memcpy(reply + 12, &body, 4); /* little-endian hosts: the header's body length */
    pid_t child = fork();
    if (child == 0) {
        close(pair[0]);
        for (long i = 0; i < iterations + WARMUP; i++) {
            if (read_all(pair[1], request, (size_t)request_bytes) < 0
                || send(pair[1], reply, (size_t)reply_bytes, 0) != reply_bytes)
                _exit(1);
        }
        _exit(0);
    }
    close(pair[1]);
    uint32_t request_body = (uint32_t)(request_bytes - 16);
    memcpy(request + 12, &request_body, 4);
    int64_t *samples = malloc((size_t)iterations * sizeof *samples);
    if (samples == NULL)
        return 1;
    int64_t started = 0;
    for (long i = -WARMUP; i < iterations; i++) {
        if (i == 0)
            started = now_ns();
        int64_t start = now_ns();
        if (round_trip(pair[0], request, (size_t)request_bytes, reply, sizeof reply) < 0)
            return 1;
        if (i >= 0)
            samples[i] = now_ns() - start;
    }
    int64_t total = now_ns() - started;
    close(pair[0]);
    int status;
    if (waitpid(child, &status, 0) < 0 || !WIFEXITED(status) || WEXITSTATUS(status) != 0)
        return 1;
    qsort(samples, (size_t)iterations, sizeof *samples, compare);
    printf("%lld %lld\n", (long long)samples[iterations / 2], (long long)total);
    free(samples);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc == 5 && strcmp(argv[1], "--floor") == 0)
        return floor_run(atol(argv[2]), atol(argv[3]), atol(argv[4]));
    if (argc != 4) {
        fprintf(stderr, "usage: %s SOCKET FRAME_FILE ITERATIONS\n"
                        "       %s --floor REQUEST_BYTES REPLY_BYTES ITERATIONS\n",
                argv[0], argv[0]);
        return 2;
    }
    long iterations = atol(argv[3]);
    FILE *f = fopen(argv[2], "rb");
    if (f == NULL || iterations < 1)
        return 2;
    static unsigned char frame[1 << 20], reply[1 << 22];
    size_t frame_len = fread(frame, 1, sizeof frame, f);
    fclose(f);
    int fd = socket(AF_UNIX, SOCK_STREAM, 0);
    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    strncpy(addr.sun_path, argv[1], sizeof addr.sun_path - 1);
    if (fd < 0 || connect(fd, (struct sockaddr *)&addr, sizeof addr) < 0) {
        perror("connect");
        return 1;
    }
    int64_t *samples = malloc((size_t)iterations * sizeof *samples);
    if (samples == NULL)
        return 1;
    for (int i = 0; i < WARMUP; i++)
        if (round_trip(fd, frame, frame_len, reply, sizeof reply) < 0)
            return 1;
    printf("ready\n");
    fflush(stdout);
    char line[16];
    if (fgets(line, sizeof line, stdin) == NULL)
        return 1;
    int64_t started = now_ns();
    for (long i = 0; i < iterations; i++) {
        int64_t start = now_ns();
        if (round_trip(fd, frame, frame_len, reply, sizeof reply) < 0)
            return 1;
        samples[i] = now_ns() - start;
    }
    int64_t total = now_ns() - started;
    qsort(samples, (size_t)iterations, sizeof *samples, compare);
    printf("%lld %lld\n", (long long)samples[iterations / 2], (long long)total);
    free(samples);
    close(fd);
    return 0;
}
