/*
 * The test driver of the C client library (tests/integration/test_c_client.py builds and runs it).
 *
 * It reads one command a line on stdin, makes the library call, and writes one JSON object a
 * line on stdout: {"code": N, "status": "NAME", "message": "...", ...what the call returned}.
 * So the Python tests drive every call of the library against a real agent and check the
 * results with NumPy, while the whole run goes under valgrind.
 *
 *   connect PATH CONNECT_MS CALL_MS          timeout CALL_MS          close
 *   load NAME URL    unload NAME    list    describe NAME
 *   predict MODEL TENSOR... [out=SEGMENT_BYTES...]
 *   capture MODEL ID|new SECONDS|now [in=TENSOR...] [out=TENSOR...] [aux=NAME:ENCODING:TEXT...]
 *   status ID        quit
 *   threads MODEL ROUNDS TENSOR...   one thread per TENSOR, all on this one client, released
 *                                    together (a barrier), each predicting ROUNDS times with
 *                                    its tensor as the only input; reports each thread's
 *                                    distinct outputs
 *
 * TENSOR is NAME:DTYPE:SHAPE:SOURCE, '-' for no name / no data type / no shape, SHAPE like
 * 1,4, and SOURCE one of
 *   file=PATH                        the file's bytes, inline
 *   sysv=PATH@OFFSET/SEGMENT/SIZE    a SysV segment this program makes (SEGMENT bytes, 0: just
 *                                    enough), the file's bytes written at OFFSET; the handle
 *                                    says OFFSET and SIZE; removed after the call
 *   posix=PATH@OFFSET/SEGMENT/SIZE   the same in a POSIX segment (shm_open, unlinked after)
 *   shmid=ID@OFFSET/SIZE             a handle naming a segment made elsewhere
 * out=SEGMENT_BYTES asks for one output written into a new SysV segment of that size; the
 * reply then carries the bytes the agent wrote there, read back from the segment.
 *
 * `--signals` sends this process SIGALRM every 200 µs through a handler installed without
 * SA_RESTART, so the library's system calls keep failing with EINTR.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ipc.h>
#include <sys/mman.h>
#include <sys/shm.h>
#include <sys/time.h>
#include <unistd.h>

#include "edge_agent_client.h"

#define MAX_WORDS 64

static volatile sig_atomic_t signals_seen;

static void on_alarm(int sig)
{
    (void)sig;
    signals_seen++;
}

/* --- JSON output ----------------------------------------------------------------------- */

static void json_string(const char *s, size_t n)
{
    putchar('"');
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '"' || c == '\\')
            printf("\\%c", c);
        else if (c < 0x20)
            printf("\\u%04x", c);
        else
            putchar(c);
    }
    putchar('"');
}

static void json_cstring(const char *s)
{
    if (s == NULL)
        printf("null");
    else
        json_string(s, strlen(s));
}

static void json_hex(const void *data, size_t n)
{
    putchar('"');
    for (size_t i = 0; i < n; i++)
        printf("%02x", ((const unsigned char *)data)[i]);
    putchar('"');
}

static void json_shape(const int32_t *shape, size_t ndim)
{
    putchar('[');
    for (size_t d = 0; d < ndim; d++)
        printf("%s%d", d ? "," : "", (int)shape[d]);
    putchar(']');
}

/* Opens the reply object with the status; the caller adds fields and calls end(). */
static void begin(int code, const ea_error *err)
{
    printf("{\"code\": %d, \"status\": \"%s\", \"message\": ", code, ea_status_name(code));
    json_cstring(code == EA_OK ? "" : err->message);
}

static void end(void)
{
    printf("}\n");
    fflush(stdout);
}

static void json_infos(const ea_tensor_info *infos, size_t n)
{
    putchar('[');
    for (size_t i = 0; i < n; i++) {
        printf("%s{\"name\": ", i ? ", " : "");
        json_cstring(infos[i].name);
        printf(", \"dtype\": %d, \"shape\": ", infos[i].data_type);
        json_shape(infos[i].shape, infos[i].ndim);
        putchar('}');
    }
    putchar(']');
}

static void json_model(const ea_model *m)
{
    printf("{\"name\": ");
    json_cstring(m->name);
    printf(", \"url\": ");
    json_cstring(m->url);
    printf(", \"delegate\": ");
    json_cstring(m->delegate);
    printf(", \"version\": ");
    json_cstring(m->version);
    printf(", \"inputs\": ");
    json_infos(m->inputs, m->n_inputs);
    printf(", \"outputs\": ");
    json_infos(m->outputs, m->n_outputs);
    putchar('}');
}

/* --- Tensors from the command line ------------------------------------------------------ */

typedef struct tensor_spec {
    char *name;
    int32_t shape[16];
    void *file_data; /* owned */
    int shmid;       /* a segment this program made, or -1 */
    char posix_name[64]; /* a POSIX segment this program made, or "" */
} tensor_spec;

static void *read_file(const char *path, size_t *size)
{
    FILE *f = fopen(path, "rb");
    if (f == NULL)
        return NULL;
    fseek(f, 0, SEEK_END);
    long length = ftell(f);
    fseek(f, 0, SEEK_SET);
    void *data = malloc(length > 0 ? (size_t)length : 1);
    if (data != NULL && fread(data, 1, (size_t)length, f) != (size_t)length) {
        free(data);
        data = NULL;
    }
    fclose(f);
    *size = (size_t)length;
    return data;
}

/* Parses NAME:DTYPE:SHAPE:SOURCE into input; 0, or -1 (a message on stderr). */
static int parse_tensor(char *text, ea_input *input, tensor_spec *spec)
{
    memset(input, 0, sizeof *input);
    memset(spec, 0, sizeof *spec);
    spec->shmid = -1;
    char *name = strtok(text, ":"), *dtype = strtok(NULL, ":"), *shape = strtok(NULL, ":");
    char *source = strtok(NULL, "");
    if (!name || !dtype || !shape || !source) {
        fprintf(stderr, "bad tensor spec\n");
        return -1;
    }
    input->name = strcmp(name, "-") ? name : NULL;
    input->data_type = strcmp(dtype, "-") ? atoi(dtype) : EA_DTYPE_UNSET;
    if (strcmp(shape, "-")) {
        for (char *d = strtok(shape, ","); d && input->ndim < 16; d = strtok(NULL, ","))
            spec->shape[input->ndim++] = atoi(d);
        input->shape = spec->shape;
    }
    if (strncmp(source, "file=", 5) == 0) {
        spec->file_data = read_file(source + 5, &input->nbytes);
        input->data = spec->file_data;
        return spec->file_data ? 0 : -1;
    }
    if (strncmp(source, "sysv=", 5) == 0 || strncmp(source, "posix=", 6) == 0) {
        int posix = source[0] == 'p';
        char *path = strtok(source + (posix ? 6 : 5), "@");
        unsigned long long offset = 0, segment = 0, size = 0;
        if (sscanf(strtok(NULL, ""), "%llu/%llu/%llu", &offset, &segment, &size) != 3)
            return -1;
        size_t length;
        spec->file_data = read_file(path, &length);
        if (spec->file_data == NULL)
            return -1;
        if (segment == 0)
            segment = offset + length;
        if (posix) {
            static int made;
            snprintf(spec->posix_name, sizeof spec->posix_name, "/c-client-test-%d-%d",
                     (int)getpid(), made++);
            int fd = shm_open(spec->posix_name, O_RDWR | O_CREAT | O_EXCL, 0600);
            if (fd < 0 || ftruncate(fd, (off_t)segment) != 0) {
                perror("shm_open");
                if (fd >= 0)
                    close(fd);
                return -1;
            }
            unsigned char *base = mmap(NULL, segment, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
            close(fd);
            if (base == MAP_FAILED)
                return -1;
            if (offset + length <= segment)
                memcpy(base + offset, spec->file_data, length);
            munmap(base, segment);
            input->shm = (ea_shm){.kind = EA_SHM_POSIX, .posix_name = spec->posix_name,
                                  .offset = offset, .size = size};
            return 0;
        }
        spec->shmid = shmget(IPC_PRIVATE, segment, IPC_CREAT | 0600);
        if (spec->shmid < 0) {
            perror("shmget");
            return -1;
        }
        unsigned char *base = shmat(spec->shmid, NULL, 0);
        if (base == (void *)-1) {
            perror("shmat");
            return -1;
        }
        if (offset + length <= segment)
            memcpy(base + offset, spec->file_data, length);
        shmdt(base);
        *input = ea_input_sysv(input->name, input->data_type, input->shape, input->ndim,
                               spec->shmid, offset, size);
        return 0;
    }
    if (strncmp(source, "shmid=", 6) == 0) {
        unsigned long long id, offset, size;
        if (sscanf(source + 6, "%llu@%llu/%llu", &id, &offset, &size) != 3)
            return -1;
        input->shm.kind = EA_SHM_SYSV;
        input->shm.segment_id = id;
        input->shm.offset = offset;
        input->shm.size = size;
        return 0;
    }
    fprintf(stderr, "bad tensor source %s\n", source);
    return -1;
}

static void free_specs(tensor_spec *specs, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        free(specs[i].file_data);
        if (specs[i].shmid >= 0)
            shmctl(specs[i].shmid, IPC_RMID, NULL);
        if (specs[i].posix_name[0])
            shm_unlink(specs[i].posix_name);
    }
}

/* --- Commands -------------------------------------------------------------------------- */

static void do_predict(ea_client *agent, char **words, int n)
{
    ea_input inputs[MAX_WORDS];
    tensor_spec specs[MAX_WORDS];
    ea_shm outs[MAX_WORDS];
    size_t n_in = 0, n_out = 0;
    ea_error err = EA_ERROR_INIT;
    int bad = 0;
    for (int i = 2; i < n; i++) {
        if (strncmp(words[i], "out=", 4) == 0) {
            int id = shmget(IPC_PRIVATE, strtoull(words[i] + 4, NULL, 10), IPC_CREAT | 0600);
            outs[n_out++] = (ea_shm){.kind = EA_SHM_SYSV, .segment_id = (uint64_t)id};
        } else if (parse_tensor(words[i], &inputs[n_in], &specs[n_in]) == 0) {
            n_in++;
        } else {
            free_specs(&specs[n_in], 1);
            bad = 1;
        }
    }
    ea_tensors outputs;
    int code = bad ? EA_INVALID_ARGUMENT
                   : ea_predict(agent, words[1], inputs, n_in, n_out ? outs : NULL, n_out,
                                &outputs, &err);
    begin(code, &err);
    if (code == EA_OK) {
        printf(", \"outputs\": [");
        for (size_t i = 0; i < outputs.count; i++) {
            const ea_tensor *t = &outputs.tensors[i];
            printf("%s{\"name\": ", i ? ", " : "");
            json_cstring(t->name);
            printf(", \"dtype\": %d, \"shape\": ", t->data_type);
            json_shape(t->shape, t->ndim);
            printf(", \"shm\": %d, \"hex\": ", t->shm_kind);
            if (t->shm_kind == EA_SHM_SYSV) {
                unsigned char *base = shmat((int)t->shm_segment_id, NULL, SHM_RDONLY);
                json_hex(base + t->shm_offset, t->shm_size);
                shmdt(base);
            } else {
                json_hex(t->data, t->nbytes);
            }
            putchar('}');
        }
        putchar(']');
        ea_tensors_free(&outputs);
    }
    end();
    ea_error_clear(&err);
    free_specs(specs, n_in);
    for (size_t i = 0; i < n_out; i++)
        shmctl((int)outs[i].segment_id, IPC_RMID, NULL);
}

static void do_capture(ea_client *agent, char **words, int n)
{
    ea_input inputs[MAX_WORDS], outputs[MAX_WORDS];
    tensor_spec in_specs[MAX_WORDS], out_specs[MAX_WORDS];
    ea_aux aux[MAX_WORDS];
    size_t n_in = 0, n_out = 0, n_aux = 0;
    char id[37];
    ea_error err = EA_ERROR_INIT;
    int code = EA_OK;
    ea_capture capture = {.model_name = words[1], .capture_id = words[2]};
    if (strcmp(words[2], "new") == 0) {
        code = ea_new_capture_id(id, &err);
        capture.capture_id = id;
    }
    if (strcmp(words[3], "now") != 0) {
        capture.has_timestamp = 1;
        capture.seconds = strtoll(words[3], NULL, 10);
    }
    for (int i = 4; i < n && code == EA_OK; i++) {
        if (strncmp(words[i], "in=", 3) == 0) {
            if (parse_tensor(words[i] + 3, &inputs[n_in], &in_specs[n_in]) != 0)
                code = EA_INVALID_ARGUMENT;
            n_in++;
        } else if (strncmp(words[i], "out=", 4) == 0) {
            if (parse_tensor(words[i] + 4, &outputs[n_out], &out_specs[n_out]) != 0)
                code = EA_INVALID_ARGUMENT;
            n_out++;
        } else if (strncmp(words[i], "aux=", 4) == 0) {
            aux[n_aux].name = strtok(words[i] + 4, ":");
            aux[n_aux].encoding = atoi(strtok(NULL, ":"));
            aux[n_aux].data = strtok(NULL, "");
            aux[n_aux].nbytes = aux[n_aux].data ? strlen(aux[n_aux].data) : 0;
            n_aux++;
        }
    }
    capture.inputs = inputs;
    capture.n_inputs = n_in;
    capture.outputs = outputs;
    capture.n_outputs = n_out;
    capture.aux_inputs = aux;
    capture.n_aux_inputs = n_aux;
    if (code == EA_OK)
        code = ea_capture_data(agent, &capture, &err);
    begin(code, &err);
    printf(", \"capture_id\": ");
    json_cstring(capture.capture_id);
    end();
    ea_error_clear(&err);
    free_specs(in_specs, n_in);
    free_specs(out_specs, n_out);
}

typedef struct worker {
    ea_client *agent;
    const char *model;
    int rounds;
    ea_input input;
    pthread_barrier_t *start;
    int failures;       /* calls that did not return EA_OK */
    char *first_hex;    /* the first output's bytes, in hex */
    int differing;      /* later outputs that differed from the first */
} worker;

static char *hex_of(const void *data, size_t n)
{
    char *hex = malloc(2 * n + 1);
    for (size_t i = 0; hex && i < n; i++)
        sprintf(hex + 2 * i, "%02x", ((const unsigned char *)data)[i]);
    if (hex)
        hex[2 * n] = '\0';
    return hex;
}

static void *work(void *arg)
{
    worker *w = arg;
    pthread_barrier_wait(w->start);
    for (int r = 0; r < w->rounds; r++) {
        ea_tensors out = {0};
        ea_error err = EA_ERROR_INIT;
        if (ea_predict(w->agent, w->model, &w->input, 1, NULL, 0, &out, &err) != EA_OK
            || out.count == 0) {
            w->failures++;
            ea_error_clear(&err);
            ea_tensors_free(&out);
            continue;
        }
        char *hex = hex_of(out.tensors[0].data, out.tensors[0].nbytes);
        if (w->first_hex == NULL)
            w->first_hex = hex;
        else {
            w->differing += hex == NULL || strcmp(hex, w->first_hex) != 0;
            free(hex);
        }
        ea_tensors_free(&out);
    }
    return NULL;
}

static void do_threads(ea_client *agent, char **words, int n)
{
    int count = n - 3;
    worker workers[MAX_WORDS];
    tensor_spec specs[MAX_WORDS];
    pthread_t threads[MAX_WORDS];
    pthread_barrier_t start;
    pthread_barrier_init(&start, NULL, (unsigned)count);
    for (int i = 0; i < count; i++) {
        workers[i] = (worker){.agent = agent, .model = words[1], .rounds = atoi(words[2]),
                              .start = &start};
        parse_tensor(words[3 + i], &workers[i].input, &specs[i]);
    }
    for (int i = 0; i < count; i++)
        pthread_create(&threads[i], NULL, work, &workers[i]);
    for (int i = 0; i < count; i++)
        pthread_join(threads[i], NULL);
    pthread_barrier_destroy(&start);
    begin(EA_OK, NULL);
    printf(", \"threads\": [");
    for (int i = 0; i < count; i++) {
        printf("%s{\"failures\": %d, \"differing\": %d, \"hex\": ", i ? ", " : "",
               workers[i].failures, workers[i].differing);
        json_cstring(workers[i].first_hex);
        putchar('}');
        free(workers[i].first_hex);
    }
    putchar(']');
    end();
    free_specs(specs, (size_t)count);
}

static void run(char **words, int n, ea_client **agent)
{
    ea_error err = EA_ERROR_INIT;
    const char *cmd = words[0];
    int code;
    if (strcmp(cmd, "connect") == 0 && n == 4) {
        code = ea_connect(words[1], atoi(words[2]), atoi(words[3]), agent, &err);
        begin(code, &err);
    } else if (strcmp(cmd, "timeout") == 0 && n == 2) {
        ea_set_call_timeout(*agent, atoi(words[1]));
        begin(EA_OK, &err);
    } else if (strcmp(cmd, "close") == 0) {
        ea_close(*agent);
        *agent = NULL;
        begin(EA_OK, &err);
    } else if (strcmp(cmd, "load") == 0 && n == 3) {
        ea_model model;
        code = ea_load_model(*agent, words[1], words[2], &model, &err);
        begin(code, &err);
        if (code == EA_OK) {
            printf(", \"model\": ");
            json_model(&model);
            ea_model_free(&model);
        }
    } else if (strcmp(cmd, "unload") == 0 && n == 2) {
        begin(ea_unload_model(*agent, words[1], &err), &err);
    } else if (strcmp(cmd, "describe") == 0 && n == 2) {
        ea_model model;
        code = ea_describe_model(*agent, words[1], &model, &err);
        begin(code, &err);
        if (code == EA_OK) {
            printf(", \"model\": ");
            json_model(&model);
            ea_model_free(&model);
        }
    } else if (strcmp(cmd, "list") == 0) {
        ea_model_list list;
        code = ea_list_models(*agent, &list, &err);
        begin(code, &err);
        if (code == EA_OK) {
            printf(", \"models\": [");
            for (size_t i = 0; i < list.count; i++) {
                printf("%s", i ? ", " : "");
                json_model(&list.models[i]);
            }
            putchar(']');
            ea_model_list_free(&list);
        }
    } else if (strcmp(cmd, "predict") == 0 && n >= 2) {
        do_predict(*agent, words, n);
        return;
    } else if (strcmp(cmd, "threads") == 0 && n >= 4) {
        do_threads(*agent, words, n);
        return;
    } else if (strcmp(cmd, "capture") == 0 && n >= 4) {
        do_capture(*agent, words, n);
        return;
    } else if (strcmp(cmd, "status") == 0 && n == 2) {
        ea_capture_status status;
        code = ea_get_capture_status(*agent, words[1], &status, &err);
        begin(code, &err);
        if (code == EA_OK) {
            printf(", \"capture_status\": %d, \"reason\": ", status.status);
            json_cstring(status.reason);
            ea_capture_status_free(&status);
        }
    } else {
        fprintf(stderr, "driver: bad command %s\n", cmd);
        begin(EA_INVALID_ARGUMENT, &(ea_error){EA_INVALID_ARGUMENT, "bad driver command"});
    }
    end();
    ea_error_clear(&err);
}

int main(int argc, char **argv)
{
    if (argc > 1 && strcmp(argv[1], "--signals") == 0) {
        struct sigaction action = {.sa_handler = on_alarm}; /* no SA_RESTART: EINTR */
        sigaction(SIGALRM, &action, NULL);
        struct itimerval every = {{0, 200}, {0, 200}};
        setitimer(ITIMER_REAL, &every, NULL);
    }
    ea_client *agent = NULL;
    char *line = NULL;
    size_t capacity = 0;
    for (;;) {
        errno = 0;
        ssize_t length = getline(&line, &capacity, stdin);
        if (length < 0 && errno == EINTR) {
            clearerr(stdin);
            continue;
        }
        if (length < 0)
            break;
        char *words[MAX_WORDS];
        int n = 0;
        for (char *w = strtok(line, " \n"); w && n < MAX_WORDS; w = strtok(NULL, " \n"))
            words[n++] = w;
        if (n == 0)
            continue;
        if (strcmp(words[0], "quit") == 0) {
            struct itimerval off = {{0, 0}, {0, 0}};
            setitimer(ITIMER_REAL, &off, NULL);
            printf("{\"code\": 0, \"signals\": %d}\n", (int)signals_seen);
            fflush(stdout);
            break;
        }
        run(words, n, &agent);
    }
    free(line);
    ea_close(agent);
    return 0;
}
