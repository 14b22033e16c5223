/* A real TensorFlow Lite external delegate for the tests: it records what it is given and
 * claims no nodes, so the CPU kernels still run the model.
 *
 * It implements the external delegate ABI that tflite_runtime.interpreter.load_delegate and
 * the C++ ExternalDelegate use (tensorflow/lite/delegates/external/
 * external_delegate_interface.h):
 *
 *   TfLiteDelegate* tflite_plugin_create_delegate(char** keys, char** values, size_t n,
 *                                                 void (*report_error)(const char*));
 *   void tflite_plugin_destroy_delegate(TfLiteDelegate* delegate);
 *
 * Options it understands (all others are only recorded):
 *   record_to=PATH    append "create KEY=VALUE..." on creation, "prepare" each time the
 *                     runtime asks it to take nodes, "destroy" when freed
 *   fail_create=MSG   refuse to be created, reporting MSG through report_error
 *   fail_prepare=1    answer kTfLiteError when asked to take nodes
 *   rendezvous=N      take every float32 ADD node and run it itself, but only once N invokes
 *                     (of any models in the process) are inside it at the same time: each
 *                     waits for the others at a barrier, up to rendezvous_seconds (default
 *                     30), then fails the invoke. A test that passes with N = 2 has shown two
 *                     invokes inside the runtime at once, by construction, not by timing.
 *                     With record_to, each invoke appends "arrive" when it reaches the barrier.
 *
 * Built by the tests with `cc -shared -fPIC`; no TensorFlow headers needed: the few types it
 * touches are declared below as tensorflow/lite/core/c/common.h declares them in 2.14, and
 * Prepare checks what it reads (an ADD node of two float32 tensors) before taking a node.
 */
#include <errno.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

typedef enum { kTfLiteOk = 0, kTfLiteError = 1 } TfLiteStatus;
typedef int TfLiteBufferHandle;
struct TfLiteOpaqueDelegateBuilder;
struct TfLiteDelegate;

typedef struct TfLiteIntArray {
  int size;
  int data[];
} TfLiteIntArray;

enum { kTfLiteFloat32 = 1, kTfLiteBuiltinAdd = 0 };

/* TfLiteTensor up to the fields read here, then padding to its 2.14 size (112 bytes on
 * 64-bit targets): context->tensors is an array of them. */
typedef struct TfLiteTensor {
  int type;
  void* data;
  TfLiteIntArray* dims;
  struct { float scale; int32_t zero_point; } params;
  int allocation_type;
  size_t bytes;
  const void* allocation;
  const char* name;
  struct TfLiteDelegate* delegate;
  TfLiteBufferHandle buffer_handle;
  bool data_is_stale;
  bool is_variable;
  struct { int type; void* params; } quantization;
  void* sparsity;
  const TfLiteIntArray* dims_signature;
} TfLiteTensor;

typedef struct TfLiteNode {
  TfLiteIntArray* inputs;
  TfLiteIntArray* outputs;
  /* more fields follow; not read here */
} TfLiteNode;

typedef struct TfLiteContext TfLiteContext;

typedef struct TfLiteRegistration {
  void* (*init)(TfLiteContext* context, const char* buffer, size_t length);
  void (*free)(TfLiteContext* context, void* buffer);
  TfLiteStatus (*prepare)(TfLiteContext* context, TfLiteNode* node);
  TfLiteStatus (*invoke)(TfLiteContext* context, TfLiteNode* node);
  const char* (*profiling_string)(const TfLiteContext* context, const TfLiteNode* node);
  int32_t builtin_code;
  const char* custom_name;
  int version;
  void* registration_external;
  void* async_kernel;
  uint64_t inplace_operator;
  /* Zeros for fields a later runtime may have added: passed by value, the runtime reads
   * as many bytes as its own declaration has. */
  uint64_t reserved[8];
} TfLiteRegistration;

struct TfLiteContext {
  size_t tensors_size;
  TfLiteStatus (*GetExecutionPlan)(struct TfLiteContext* context, TfLiteIntArray** plan);
  TfLiteTensor* tensors;
  void* impl_;
  void* ResizeTensor;
  void* ReportError;
  void* AddTensors;
  TfLiteStatus (*GetNodeAndRegistration)(struct TfLiteContext* context, int node_index,
                                         TfLiteNode** node, TfLiteRegistration** registration);
  TfLiteStatus (*ReplaceNodeSubsetsWithDelegateKernels)(
      struct TfLiteContext* context, TfLiteRegistration registration,
      const TfLiteIntArray* nodes_to_replace, struct TfLiteDelegate* delegate);
  /* more fields follow; not used here */
};

/* The layout of TfLiteDelegate in TensorFlow Lite 2.14 (field order is ABI). */
typedef struct TfLiteDelegate {
  void* data_;
  TfLiteStatus (*Prepare)(TfLiteContext* context, struct TfLiteDelegate* delegate);
  TfLiteStatus (*CopyFromBufferHandle)(TfLiteContext* context, struct TfLiteDelegate* delegate,
                                       TfLiteBufferHandle buffer_handle, TfLiteTensor* tensor);
  TfLiteStatus (*CopyToBufferHandle)(TfLiteContext* context, struct TfLiteDelegate* delegate,
                                     TfLiteBufferHandle buffer_handle, TfLiteTensor* tensor);
  void (*FreeBufferHandle)(TfLiteContext* context, struct TfLiteDelegate* delegate,
                           TfLiteBufferHandle* handle);
  int64_t flags;
  struct TfLiteOpaqueDelegateBuilder* opaque_delegate_builder;
} TfLiteDelegate;

typedef struct {
  char record_to[4096];
  int fail_prepare;
  int rendezvous;
} Recorder;

/* The barrier, one per process: every model's kernel meets at it. */
static pthread_mutex_t barrier_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t barrier_moved = PTHREAD_COND_INITIALIZER;
static int barrier_parties = 0;
static int barrier_waiting = 0;
static unsigned long barrier_generation = 0;
static int barrier_seconds = 30;
static Recorder* barrier_recorder = NULL;  /* the last one created with rendezvous */

static void record(const Recorder* recorder, const char* line) {
  if (recorder->record_to[0] == '\0') return;
  FILE* f = fopen(recorder->record_to, "a");
  if (f == NULL) return;
  fputs(line, f);
  fputc('\n', f);
  fclose(f);
}

/* Wait until barrier_parties invokes are here; 0 when they met, -1 after barrier_seconds. */
static int meet(void) {
  struct timespec deadline;
  clock_gettime(CLOCK_REALTIME, &deadline);
  deadline.tv_sec += barrier_seconds;
  pthread_mutex_lock(&barrier_lock);
  unsigned long generation = barrier_generation;
  if (++barrier_waiting >= barrier_parties) {
    barrier_waiting = 0;
    barrier_generation++;
    pthread_cond_broadcast(&barrier_moved);
    pthread_mutex_unlock(&barrier_lock);
    return 0;
  }
  int rc = 0;
  while (generation == barrier_generation && rc != ETIMEDOUT)
    rc = pthread_cond_timedwait(&barrier_moved, &barrier_lock, &deadline);
  int met = generation != barrier_generation;
  if (!met) barrier_waiting--;  /* gave up: it no longer counts as waiting */
  pthread_mutex_unlock(&barrier_lock);
  return met ? 0 : -1;
}

/* The agent first runs a model once in a process of its own (edge_agent/model_probe.py, which
 * sets EDGE_AGENT_MODEL_PROBE there): that lone invoke is no party to the barrier. */
static bool in_model_check(void) {
  const char* value = getenv("EDGE_AGENT_MODEL_PROBE");
  return value != NULL && value[0] != '\0';
}

/* The kernel of a taken ADD node: meet the other invokes, then out = a + b. */
static TfLiteStatus AddInvoke(TfLiteContext* context, TfLiteNode* node) {
  if (!in_model_check()) {
    pthread_mutex_lock(&barrier_lock);
    if (barrier_recorder != NULL) record(barrier_recorder, "arrive");
    pthread_mutex_unlock(&barrier_lock);
    if (meet() != 0) return kTfLiteError;
  }
  const TfLiteTensor* a = &context->tensors[node->inputs->data[0]];
  const TfLiteTensor* b = &context->tensors[node->inputs->data[1]];
  TfLiteTensor* out = &context->tensors[node->outputs->data[0]];
  const float* x = (const float*)a->data;
  const float* y = (const float*)b->data;
  float* z = (float*)out->data;
  for (size_t i = 0; i < out->bytes / sizeof(float); i++) z[i] = x[i] + y[i];
  return kTfLiteOk;
}

static TfLiteStatus AddPrepare(TfLiteContext* context, TfLiteNode* node) {
  (void)context;
  (void)node;
  return kTfLiteOk;
}

/* An ADD of two float32 tensors of the output's size, and nothing else, is taken. */
static bool takes(TfLiteContext* context, TfLiteNode* node, TfLiteRegistration* registration) {
  if (registration->builtin_code != kTfLiteBuiltinAdd || node->inputs->size != 2 ||
      node->outputs->size != 1)
    return false;
  const TfLiteTensor* out = &context->tensors[node->outputs->data[0]];
  for (int i = 0; i < 2; i++) {
    const TfLiteTensor* in = &context->tensors[node->inputs->data[i]];
    if (in->type != kTfLiteFloat32 || in->bytes != out->bytes) return false;
  }
  return out->type == kTfLiteFloat32;
}

/* Asked to take nodes: none, unless rendezvous is set; then every float32 ADD. */
static TfLiteStatus Prepare(TfLiteContext* context, TfLiteDelegate* delegate) {
  Recorder* recorder = (Recorder*)delegate->data_;
  record(recorder, "prepare");
  if (recorder->fail_prepare) return kTfLiteError;
  if (!recorder->rendezvous) return kTfLiteOk;
  TfLiteIntArray* plan;
  if (context->GetExecutionPlan(context, &plan) != kTfLiteOk) return kTfLiteError;
  TfLiteIntArray* taken = calloc(1, sizeof(TfLiteIntArray) + sizeof(int) * (plan->size + 1));
  if (taken == NULL) return kTfLiteError;
  for (int i = 0; i < plan->size; i++) {
    TfLiteNode* node;
    TfLiteRegistration* registration;
    if (context->GetNodeAndRegistration(context, plan->data[i], &node, &registration) ==
            kTfLiteOk && takes(context, node, registration))
      taken->data[taken->size++] = plan->data[i];
  }
  char line[64];
  snprintf(line, sizeof(line), "took %d node(s)", taken->size);
  record(recorder, line);
  TfLiteStatus status = kTfLiteOk;
  if (taken->size > 0) {
    TfLiteRegistration kernel;
    memset(&kernel, 0, sizeof(kernel));
    kernel.prepare = AddPrepare;
    kernel.invoke = AddInvoke;
    kernel.custom_name = "recording_rendezvous_add";
    kernel.version = 1;
    kernel.builtin_code = 32; /* kTfLiteBuiltinDelegate */
    status = context->ReplaceNodeSubsetsWithDelegateKernels(context, kernel, taken, delegate);
  }
  free(taken);
  return status;
}

TfLiteDelegate* tflite_plugin_create_delegate(char** keys, char** values, size_t n,
                                              void (*report_error)(const char*)) {
  Recorder* recorder = calloc(1, sizeof(Recorder));
  TfLiteDelegate* delegate = calloc(1, sizeof(TfLiteDelegate));
  if (recorder == NULL || delegate == NULL) {
    free(recorder);
    free(delegate);
    if (report_error) report_error("recording delegate: out of memory");
    return NULL;
  }
  char line[8192] = "create";
  for (size_t i = 0; i < n; i++) {
    if (strcmp(keys[i], "fail_create") == 0) {
      if (report_error) report_error(values[i]);
      free(recorder);
      free(delegate);
      return NULL;
    }
    if (strcmp(keys[i], "record_to") == 0) {
      strncpy(recorder->record_to, values[i], sizeof(recorder->record_to) - 1);
    } else if (strcmp(keys[i], "fail_prepare") == 0) {
      recorder->fail_prepare = strcmp(values[i], "0") != 0;
    } else if (strcmp(keys[i], "rendezvous") == 0) {
      recorder->rendezvous = atoi(values[i]);
      barrier_parties = recorder->rendezvous;
    } else if (strcmp(keys[i], "rendezvous_seconds") == 0) {
      barrier_seconds = atoi(values[i]);
    }
    size_t used = strlen(line);
    snprintf(line + used, sizeof(line) - used, " %s=%s", keys[i], values[i]);
  }
  record(recorder, line);
  if (recorder->rendezvous) {
    pthread_mutex_lock(&barrier_lock);
    barrier_recorder = recorder;
    pthread_mutex_unlock(&barrier_lock);
  }
  delegate->data_ = recorder;
  delegate->Prepare = Prepare;
  delegate->flags = 0;
  return delegate;
}

void tflite_plugin_destroy_delegate(TfLiteDelegate* delegate) {
  if (delegate == NULL) return;
  Recorder* recorder = (Recorder*)delegate->data_;
  record(recorder, "destroy");
  pthread_mutex_lock(&barrier_lock);
  if (barrier_recorder == recorder) barrier_recorder = NULL;
  pthread_mutex_unlock(&barrier_lock);
  free(recorder);
  free(delegate);
}
