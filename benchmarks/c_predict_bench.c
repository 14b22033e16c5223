/*
 * c_predict_bench: Predict round trips of the tiny model ([1,4] float32 a + b) through the
 * C client library, p50/p99 in microseconds.
 *
 *     c_predict_bench SOCKET [ITERATIONS [MODEL_PATH]]
 *
 * With MODEL_PATH it loads the model as "tiny" first (one already loaded under that name is
 * used as it is). Inputs go by name with full metadata, as the Python client sends them;
 * 200 warm-up calls are not counted. benchmarks/bench_c_client.py runs it beside the Python
 * client on one agent (`make c-bench`).
 */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "edge_agent_client.h"

#define WARMUP 200

static int compare(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

static int64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static int failed(const char *what, ea_error *err)
{
    fprintf(stderr, "%s: %s: %s\n", what, ea_status_name(err->code),
            err->message ? err->message : "");
    ea_error_clear(err);
    return 1;
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: %s SOCKET [ITERATIONS [MODEL_PATH]]\n", argv[0]);
        return 2;
    }
    long iterations = argc > 2 ? atol(argv[2]) : 3000;
    if (iterations < 1)
        iterations = 1;
    ea_error err = EA_ERROR_INIT;
    ea_client *agent;
    if (ea_connect(argv[1], 2000, 30000, &agent, &err) != EA_OK)
        return failed("connect", &err);
    if (argc > 3 && ea_load_model(agent, "tiny", argv[3], NULL, &err) != EA_OK
        && err.code != EA_ALREADY_EXISTS) {
        ea_close(agent);
        return failed("load", &err);
    }
    ea_error_clear(&err);

    static const int32_t shape[] = {1, 4};
    float a[4] = {0.5f, -1.0f, 2.0f, 3.25f}, b[4] = {1.0f, 2.0f, -3.0f, 0.75f};
    ea_input inputs[] = {ea_input_bytes("a", EA_FLOAT32, shape, 2, a, sizeof a),
                         ea_input_bytes("b", EA_FLOAT32, shape, 2, b, sizeof b)};
    int64_t *samples = malloc((size_t)iterations * sizeof *samples);
    if (samples == NULL) {
        ea_close(agent);
        return 1;
    }
    for (long i = -WARMUP; i < iterations; i++) {
        ea_tensors outputs;
        int64_t start = now_ns();
        if (ea_predict(agent, "tiny", inputs, 2, NULL, 0, &outputs, &err) != EA_OK) {
            free(samples);
            ea_close(agent);
            return failed("predict", &err);
        }
        ea_tensors_free(&outputs);
        if (i >= 0)
            samples[i] = now_ns() - start;
    }
    qsort(samples, (size_t)iterations, sizeof *samples, compare);
    double p50 = (iterations % 2 ? (double)samples[iterations / 2]
                                 : (samples[iterations / 2 - 1] + samples[iterations / 2]) / 2.0);
    long p99_index = (long)(iterations * 0.99);
    if (p99_index > iterations - 1)
        p99_index = iterations - 1;
    printf("C client: tiny Predict round trip, %ld calls: p50 %.1f us, p99 %.1f us\n",
           iterations, p50 / 1e3, samples[p99_index] / 1e3);
    free(samples);
    ea_close(agent);
    return 0;
}
