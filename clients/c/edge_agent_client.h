/*
 * edge_agent_client.h: a C client for the edge-agent framed protocol (docs/PROTOCOL.md).
 *
 *     ea_client *agent;
 *     ea_error err = EA_ERROR_INIT;
 *     if (ea_connect("/tmp/edge-agent.sock", 1000, 5000, &agent, &err) != EA_OK) {
 *         fprintf(stderr, "%d: %s\n", err.code, err.message);
 *         ea_error_clear(&err);
 *     }
 *
 * Every call returns EA_OK (0) or a gRPC status code (EA_NOT_FOUND, ...), and when it fails
 * and `err` is not NULL, fills `err` with that code and a message (the agent's own, or one
 * saying what went wrong on this side). The library never prints, exits or aborts, and never
 * raises SIGPIPE. Returned memory belongs to the caller and is released with the matching
 * ea_*_free function. See clients/c/README.md.
 */
#ifndef EDGE_AGENT_CLIENT_H
#define EDGE_AGENT_CLIENT_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Status codes: gRPC's numbering, as on the wire. */
enum {
    EA_OK = 0,
    EA_CANCELLED = 1,
    EA_UNKNOWN = 2,
    EA_INVALID_ARGUMENT = 3,
    EA_DEADLINE_EXCEEDED = 4,
    EA_NOT_FOUND = 5,
    EA_ALREADY_EXISTS = 6,
    EA_PERMISSION_DENIED = 7,
    EA_RESOURCE_EXHAUSTED = 8,
    EA_FAILED_PRECONDITION = 9,
    EA_ABORTED = 10,
    EA_OUT_OF_RANGE = 11,
    EA_UNIMPLEMENTED = 12,
    EA_INTERNAL = 13,
    EA_UNAVAILABLE = 14,
    EA_DATA_LOSS = 15,
    EA_UNAUTHENTICATED = 16
};

/* DataType of agent.proto. */
enum {
    EA_UINT8 = 0, EA_INT16 = 1, EA_INT32 = 2, EA_INT64 = 3, EA_FLOAT16 = 4, EA_FLOAT32 = 5,
    EA_FLOAT64 = 6, EA_INT8 = 7, EA_BOOL = 8, EA_UINT16 = 9, EA_UINT32 = 10, EA_UINT64 = 11,
    EA_COMPLEX64 = 12, EA_COMPLEX128 = 13,
    EA_DTYPE_UNSET = -1 /* in an ea_input: the model's own data type */
};

/* Bytes of one element of a data type (EA_BOOL: 1, EA_COMPLEX128: 16); 0 for an unknown one. */
size_t ea_data_type_size(int data_type);

/* Encoding of auxiliary capture data (agent.proto Encoding). */
enum { EA_CSV = 0, EA_JSON = 1, EA_NONE = 2, EA_BASE64 = 3 };

/* CaptureDataStatus of agent.proto. */
enum { EA_CAPTURE_FAILURE = 0, EA_CAPTURE_SUCCESS = 1, EA_CAPTURE_IN_PROGRESS = 2 };

/* Method numbers of the framed protocol. */
enum {
    EA_METHOD_PREDICT = 1, EA_METHOD_LOAD_MODEL = 2, EA_METHOD_UNLOAD_MODEL = 3,
    EA_METHOD_LIST_MODELS = 4, EA_METHOD_DESCRIBE_MODEL = 5, EA_METHOD_CAPTURE_DATA = 6,
    EA_METHOD_GET_CAPTURE_DATA_STATUS = 7
};

/* A failed call's status and message. Start with EA_ERROR_INIT; ea_error_clear frees the
 * message and resets it. A call that fails replaces what err held (freeing it); a call that
 * succeeds leaves err as it was. */
typedef struct ea_error {
    int code;      /* EA_OK or a status code */
    char *message; /* NUL-terminated, owned; NULL when code is EA_OK (or memory ran out) */
} ea_error;
#define EA_ERROR_INIT {0, NULL}
void ea_error_clear(ea_error *err);
/* "NOT_FOUND" for EA_NOT_FOUND...; "UNKNOWN" for a number gRPC does not define. Static. */
const char *ea_status_name(int code);

/* One connection to the agent. Calls on one client from several threads take turns (a
 * mutex); for parallel calls, use one client per thread. */
typedef struct ea_client ea_client;

/* connect_timeout_ms bounds connect(); call_timeout_ms bounds each call's send and wait for
 * its reply (DEADLINE_EXCEEDED). 0 or less: no limit. Failure to reach the agent:
 * UNAVAILABLE. On success *out is the client, to close with ea_close. */
int ea_connect(const char *socket_path, int connect_timeout_ms, int call_timeout_ms,
               ea_client **out, ea_error *err);
/* Changes the call timeout for later calls (<= 0: no limit). */
void ea_set_call_timeout(ea_client *client, int call_timeout_ms);
/* Closes the connection and frees the client (no call may be running on it). NULL is
 * allowed. */
void ea_close(ea_client *client);

/* --- Models -------------------------------------------------------------------------- */

typedef struct ea_tensor_info {
    char *name;         /* NUL-terminated (a name with a NUL byte in it is cut there) */
    int data_type;      /* EA_FLOAT32, ... */
    int32_t *shape;     /* -1 marks a dynamic dimension */
    size_t ndim;
} ea_tensor_info;

typedef struct ea_model {
    char *name;
    char *url;
    char *delegate;     /* "xnnpack", "cpu", "edgetpu", "external:<path>" or "" */
    ea_tensor_info *inputs;
    size_t n_inputs;
    ea_tensor_info *outputs;
    size_t n_outputs;
    char *version;      /* the signed package's version, "" for a bare .tflite model */
} ea_model;

typedef struct ea_model_list {
    ea_model *models;   /* sorted by name */
    size_t count;
} ea_model_list;

/* Frees what a model or list holds (not the struct itself) and zeroes it. NULL allowed. */
void ea_model_free(ea_model *model);
void ea_model_list_free(ea_model_list *list);

/* url: a local path or file:///abs/path. model_out may be NULL; else it receives the
 * model's description (free with ea_model_free). */
int ea_load_model(ea_client *client, const char *name, const char *url, ea_model *model_out,
                  ea_error *err);
int ea_unload_model(ea_client *client, const char *name, ea_error *err);
int ea_list_models(ea_client *client, ea_model_list *out, ea_error *err);
int ea_describe_model(ea_client *client, const char *name, ea_model *out, ea_error *err);

/* --- Tensors ------------------------------------------------------------------------- */

enum { EA_SHM_NONE = 0, EA_SHM_SYSV = 1, EA_SHM_POSIX = 2 };

/* Where a tensor lies in shared memory (docs/SHARED_MEMORY.md). */
typedef struct ea_shm {
    int kind;               /* EA_SHM_NONE, EA_SHM_SYSV or EA_SHM_POSIX */
    uint64_t segment_id;    /* SysV: the shmid from shmget */
    const char *posix_name; /* POSIX: the shm_open name */
    uint64_t offset;
    uint64_t size;          /* 0: the tensor's byte length (inputs) / to the segment's end
                               (output room) */
} ea_shm;

/* One input tensor. Inputs go by name when every one has a name, by position when none has.
 * With no name, EA_DTYPE_UNSET and ndim 0, no metadata is sent and the model's own data type
 * and shape are assumed; otherwise the data type is required (INVALID_ARGUMENT without it:
 * the agent checks it), and ndim 0 still means the model's own shape; give the shape for a
 * dynamic dimension. A zeroed ea_input says EA_UINT8 (0): start from ea_input_bytes or
 * ea_input_sysv. The bytes are C order,
 * little-endian: `data`/`nbytes` inline, or `shm` when shm.kind is not EA_SHM_NONE. The
 * library only reads what these point to, during the call. */
typedef struct ea_input {
    const char *name;
    int data_type;
    const int32_t *shape;
    size_t ndim;
    const void *data;
    size_t nbytes;
    ea_shm shm;
} ea_input;

/* Convenience initialisers. */
ea_input ea_input_bytes(const char *name, int data_type, const int32_t *shape, size_t ndim,
                        const void *data, size_t nbytes);
ea_input ea_input_sysv(const char *name, int data_type, const int32_t *shape, size_t ndim,
                       int shmid, uint64_t offset, uint64_t size);

/* One output tensor of a reply. */
typedef struct ea_tensor {
    char *name;
    int data_type;
    int32_t *shape;     /* the actual shape */
    size_t ndim;
    void *data;         /* the bytes (NULL when written into shared memory: see shm) */
    size_t nbytes;
    int shm_kind;       /* EA_SHM_NONE, or where the agent wrote it when asked to */
    uint64_t shm_segment_id;
    char *shm_posix_name; /* owned, NULL unless EA_SHM_POSIX */
    uint64_t shm_offset;
    uint64_t shm_size;  /* the bytes written */
} ea_tensor;

typedef struct ea_tensors {
    ea_tensor *tensors; /* in the model's output order */
    size_t count;
} ea_tensors;

/* Frees what the list holds (not the struct) and zeroes it. NULL allowed. */
void ea_tensors_free(ea_tensors *tensors);

/* Runs the model. output_shm: NULL (outputs come back inline), or one handle per model
 * output (the agent writes each there; the reply says where and how many bytes). */
int ea_predict(ea_client *client, const char *model_name, const ea_input *inputs,
               size_t n_inputs, const ea_shm *output_shm, size_t n_output_shm,
               ea_tensors *out, ea_error *err);

/* --- Capture ------------------------------------------------------------------------- */

typedef struct ea_aux {
    const char *name;
    int encoding;       /* EA_CSV, EA_JSON, EA_NONE, EA_BASE64 */
    const void *data;
    size_t nbytes;
} ea_aux;

typedef struct ea_capture {
    const char *model_name;
    const char *capture_id;  /* a UUID string; ea_new_capture_id makes one */
    int has_timestamp;       /* 0: now */
    int64_t seconds;         /* when the inference ran, since the epoch */
    int32_t nanos;
    const ea_input *inputs;
    size_t n_inputs;
    const ea_input *outputs;
    size_t n_outputs;
    const ea_aux *aux_inputs;
    size_t n_aux_inputs;
    const ea_aux *aux_outputs;
    size_t n_aux_outputs;
} ea_capture;

/* Writes a random (version 4) UUID and a NUL into out. EA_OK, or INTERNAL when the kernel's
 * random source fails. */
int ea_new_capture_id(char out[37], ea_error *err);

/* Returns once the agent has accepted the capture (ALREADY_EXISTS for a capture id in use). */
int ea_capture_data(ea_client *client, const ea_capture *capture, ea_error *err);

typedef struct ea_capture_status {
    int status;         /* EA_CAPTURE_IN_PROGRESS, EA_CAPTURE_SUCCESS or EA_CAPTURE_FAILURE */
    char *reason;       /* why, for a FAILURE ("" otherwise); owned */
} ea_capture_status;
void ea_capture_status_free(ea_capture_status *status);

/* NOT_FOUND for a capture id the agent does not know. */
int ea_get_capture_status(ea_client *client, const char *capture_id, ea_capture_status *out,
                          ea_error *err);

#ifdef __cplusplus
}
#endif
#endif /* EDGE_AGENT_CLIENT_H */
