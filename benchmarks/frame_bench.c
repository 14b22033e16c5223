/*
 * frame_bench: the C side of `edge-agent bench` (edge_agent/tools/bench.py). Only libc and
 * pthreads: no protobuf, no client library, so what it times is the socket and the agent.
 *
 *     frame_bench pingpong REQUEST_BYTES REPLY_BYTES ITERATIONS [CPU CHILD_CPU]
 *         The floor: a forked child echoes over a UNIX socket pair, REQUEST_BYTES one way and
 *         REPLY_BYTES back per round trip (the sizes of a real Predict's frames), blocking
 *         reads and writes on both sides as the agent and its clients use them. With CPU and
 *         CHILD_CPU, the timing side is pinned to CPU and the echo to CHILD_CPU, as the bench
 *         pins a client and the agent for its latency figures.
 *     frame_bench replay SOCKET ITERATIONS FRAME_FILE [FRAME_FILE...]
 *         One client thread (its own connection) per FRAME_FILE, each sending its file's
 *         pre-encoded request frame ITERATIONS times and reading each reply frame whole. The
 *         threads start together (a barrier after their warm-up), so the calls per second
 *         with several files are the agent's throughput under that many clients.
 *     frame_bench replay-sync SOCKET ITERATIONS FRAME_FILE [FRAME_FILE...]
 *         The same, in step with the program that reads the agent's CPU and context switches
 *         around the timed calls: after the warm-up it prints "ready" and waits for a line on
 *         its standard input before the timed calls; after them it prints its figures and
 *         keeps every connection open until its standard input ends, so the agent's thread
 *         for each connection (if it has one) is still there to be read.
 *
 * Prints one JSON object: p50_us and p99_us of all round trips, calls, seconds (the barrier to
 * the last thread's end) and requests_per_s. A reply whose status is not OK is an error: the
 * program prints the agent's message and exits 1. 200 warm-up round trips per client are not
 * counted.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <sched.h>
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
#define HEADER_BYTES 16

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

static int write_all(int fd, const void *data, size_t size)
{
    const char *p = data;
    while (size > 0) {
        ssize_t n = write(fd, p, size);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return -1;
        p += n;
        size -= (size_t)n;
    }
    return 0;
}

/* 0 when all `size` bytes came, -1 at an error or end of stream. */
static int read_all(int fd, void *data, size_t size)
{
    char *p = data;
    while (size > 0) {
        ssize_t n = read(fd, p, size);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return -1;
        p += n;
        size -= (size_t)n;
    }
    return 0;
}

static void print_result(int64_t *samples, long count, int64_t elapsed_ns)
{
    qsort(samples, (size_t)count, sizeof *samples, compare);
    double p50 = count % 2 ? (double)samples[count / 2]
                           : (samples[count / 2 - 1] + samples[count / 2]) / 2.0;
    long p99_index = (long)(count * 0.99);
    if (p99_index > count - 1)
        p99_index = count - 1;
    double seconds = elapsed_ns / 1e9;
    printf("{\"p50_us\": %.3f, \"p99_us\": %.3f, \"calls\": %ld, \"seconds\": %.6f, "
           "\"requests_per_s\": %.1f}\n",
           p50 / 1e3, samples[p99_index] / 1e3, count, seconds, count / seconds);
}

/* Pins the calling thread (and what it forks or starts later) to `cpu`; -1 leaves it. */
static int pin_to(int cpu)
{
    if (cpu < 0)
        return 0;
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    if (sched_setaffinity(0, sizeof set, &set) != 0) {
        perror("sched_setaffinity");
        return -1;
    }
    return 0;
}

static int pingpong(long request_bytes, long reply_bytes, long iterations, int cpu, int child_cpu)
{
    int pair[2];
    if (socketpair(AF_UNIX, SOCK_STREAM, 0, pair) != 0) {
        perror("socketpair");
        return 1;
    }
    char *request = calloc(1, (size_t)request_bytes), *reply = calloc(1, (size_t)reply_bytes);
    int64_t *samples = malloc((size_t)iterations * sizeof *samples);
    if (request == NULL || reply == NULL || samples == NULL)
        return 1;
    pid_t child = fork();
    if (child < 0) {
        perror("fork");
        return 1;
    }
    if (child == 0) { /* the echo: one reply per whole request, until the parent closes */
        close(pair[0]);
        if (pin_to(child_cpu) != 0)
            _exit(1);
        while (read_all(pair[1], request, (size_t)request_bytes) == 0)
            if (write_all(pair[1], reply, (size_t)reply_bytes) != 0)
                break;
        _exit(0);
    }
    close(pair[1]);
    if (pin_to(cpu) != 0)
        return 1;
    int64_t begin = 0;
    for (long i = -WARMUP; i < iterations; i++) {
        int64_t start = now_ns();
        if (i == 0)
            begin = start;
        if (write_all(pair[0], request, (size_t)request_bytes) != 0
            || read_all(pair[0], reply, (size_t)reply_bytes) != 0) {
            perror("pingpong");
            return 1;
        }
        if (i >= 0)
            samples[i] = now_ns() - start;
    }
    int64_t elapsed = now_ns() - begin;
    close(pair[0]);
    waitpid(child, NULL, 0);
    print_result(samples, iterations, elapsed);
    return 0;
}

struct client {
    const char *socket_path;
    char *frame;
    size_t frame_size;
    long iterations;
    int64_t *samples;
    int64_t start_ns, end_ns;
    int fd;
    pthread_barrier_t *warm, *start;
    char error[512];
};

static int connect_to(const char *path)
{
    struct sockaddr_un address = {.sun_family = AF_UNIX};
    if (strlen(path) >= sizeof address.sun_path)
        return -1;
    strcpy(address.sun_path, path);
    int fd = socket(AF_UNIX, SOCK_STREAM, 0);
    if (fd >= 0 && connect(fd, (struct sockaddr *)&address, sizeof address) != 0) {
        close(fd);
        fd = -1;
    }
    return fd;
}

/* One round trip; on a reply that is not OK, its status and message go to c->error. */
static int round_trip(struct client *c, int fd, char **body, size_t *body_capacity)
{
    unsigned char header[HEADER_BYTES];
    if (write_all(fd, c->frame, c->frame_size) != 0 || read_all(fd, header, sizeof header) != 0) {
        snprintf(c->error, sizeof c->error, "connection: %s", strerror(errno));
        return -1;
    }
    uint16_t status = (uint16_t)(header[6] | header[7] << 8);
    uint32_t length = (uint32_t)header[12] | (uint32_t)header[13] << 8
                      | (uint32_t)header[14] << 16 | (uint32_t)header[15] << 24;
    if (header[0] != 'E' || header[1] != 'A') {
        snprintf(c->error, sizeof c->error, "reply without the frame magic");
        return -1;
    }
    if (length > *body_capacity) {
        char *grown = realloc(*body, length);
        if (grown == NULL) {
            snprintf(c->error, sizeof c->error, "out of memory for a %u-byte reply", length);
            return -1;
        }
        *body = grown;
        *body_capacity = length;
    }
    if (read_all(fd, *body, length) != 0) {
        snprintf(c->error, sizeof c->error, "connection: %s", strerror(errno));
        return -1;
    }
    if (status != 0) {
        snprintf(c->error, sizeof c->error, "status %u: %.*s", status,
                 (int)(length < 400 ? length : 400), *body);
        return -1;
    }
    return 0;
}

static void *run_client(void *arg)
{
    struct client *c = arg;
    char *body = NULL;
    size_t capacity = 0;
    int fd = connect_to(c->socket_path);
    int ok = fd >= 0;
    if (!ok)
        snprintf(c->error, sizeof c->error, "connect %s: %s", c->socket_path, strerror(errno));
    for (long i = 0; ok && i < WARMUP; i++)
        ok = round_trip(c, fd, &body, &capacity) == 0;
    /* Every thread reaches the barriers, failed or not, so none waits forever. */
    pthread_barrier_wait(c->warm);
    pthread_barrier_wait(c->start);
    c->start_ns = now_ns();
    for (long i = 0; ok && i < c->iterations; i++) {
        int64_t start = now_ns();
        ok = round_trip(c, fd, &body, &capacity) == 0;
        c->samples[i] = now_ns() - start;
    }
    c->end_ns = now_ns();
    free(body);
    c->fd = fd; /* closed by replay(), after the figures are read in replay-sync */
    return NULL;
}

static char *read_file(const char *path, size_t *size)
{
    FILE *f = fopen(path, "rb");
    if (f == NULL)
        return NULL;
    char *data = NULL;
    if (fseek(f, 0, SEEK_END) == 0) {
        long n = ftell(f);
        if (n > 0 && fseek(f, 0, SEEK_SET) == 0 && (data = malloc((size_t)n)) != NULL
            && fread(data, 1, (size_t)n, f) != (size_t)n) {
            free(data);
            data = NULL;
        }
        *size = (size_t)n;
    }
    fclose(f);
    return data;
}

/* Waits for a line (sync: the go) or the end (sync: the close) of standard input. */
static void wait_for_input(int whole)
{
    int ch;
    while ((ch = getchar()) != EOF)
        if (!whole && ch == '\n')
            break;
}

static int replay(const char *socket_path, long iterations, int count, char **files, int sync)
{
    struct client *clients = calloc((size_t)count, sizeof *clients);
    pthread_t *threads = calloc((size_t)count, sizeof *threads);
    int64_t *samples = malloc((size_t)count * (size_t)iterations * sizeof *samples);
    pthread_barrier_t warm, start;
    if (clients == NULL || threads == NULL || samples == NULL
        || pthread_barrier_init(&warm, NULL, (unsigned)count + 1) != 0
        || pthread_barrier_init(&start, NULL, (unsigned)count + 1) != 0)
        return 1;
    for (int i = 0; i < count; i++) {
        struct client *c = &clients[i];
        c->socket_path = socket_path;
        c->iterations = iterations;
        c->samples = samples + (size_t)i * (size_t)iterations;
        c->warm = &warm;
        c->start = &start;
        c->fd = -1;
        if ((c->frame = read_file(files[i], &c->frame_size)) == NULL) {
            fprintf(stderr, "cannot read %s\n", files[i]);
            return 1;
        }
        if (pthread_create(&threads[i], NULL, run_client, c) != 0)
            return 1;
    }
    /* The span runs from the first client's start to the last one's end, as the clients saw
     * them: this thread may be scheduled after the barrier later than they are. */
    pthread_barrier_wait(&warm);
    if (sync) {
        printf("ready\n");
        fflush(stdout);
        wait_for_input(0);
    }
    pthread_barrier_wait(&start);
    int64_t begin = INT64_MAX, end = 0;
    int failed = 0;
    for (int i = 0; i < count; i++) {
        pthread_join(threads[i], NULL);
        if (clients[i].error[0]) {
            fprintf(stderr, "client %d (%s): %s\n", i, files[i], clients[i].error);
            failed = 1;
        }
        if (clients[i].start_ns < begin)
            begin = clients[i].start_ns;
        if (clients[i].end_ns > end)
            end = clients[i].end_ns;
        free(clients[i].frame);
    }
    if (!failed) {
        print_result(samples, (long)count * iterations, end - begin);
        fflush(stdout);
        if (sync)
            wait_for_input(1);
    }
    for (int i = 0; i < count; i++)
        if (clients[i].fd >= 0)
            close(clients[i].fd);
    return failed;
}

int main(int argc, char **argv)
{
    if ((argc == 5 || argc == 7) && strcmp(argv[1], "pingpong") == 0) {
        long request = atol(argv[2]), reply = atol(argv[3]), iterations = atol(argv[4]);
        int cpu = argc == 7 ? atoi(argv[5]) : -1, child_cpu = argc == 7 ? atoi(argv[6]) : -1;
        if (request > 0 && reply > 0 && iterations > 0 && cpu < CPU_SETSIZE
            && child_cpu < CPU_SETSIZE)
            return pingpong(request, reply, iterations, cpu, child_cpu);
    } else if (argc >= 5 && (strcmp(argv[1], "replay") == 0
                             || strcmp(argv[1], "replay-sync") == 0)) {
        long iterations = atol(argv[3]);
        if (iterations > 0)
            return replay(argv[2], iterations, argc - 4, argv + 4,
                          strcmp(argv[1], "replay-sync") == 0);
    }
    fprintf(stderr, "usage: %s pingpong REQUEST_BYTES REPLY_BYTES ITERATIONS [CPU CHILD_CPU]\n"
                    "       %s replay|replay-sync SOCKET ITERATIONS FRAME_FILE [FRAME_FILE...]\n",
            argv[0], argv[0]);
    return 2;
}
