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
 *
 * Built by the tests with `cc -shared -fPIC`; no TensorFlow headers needed: the few types it
 * touches are declared below as tensorflow/lite/core/c/common.h declares them in 2.14.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef enum { kTfLiteOk = 0, kTfLiteError = 1 } TfLiteStatus;
typedef int TfLiteBufferHandle;
typedef struct TfLiteContext TfLiteContext;  /* opaque here: never dereferenced */
typedef struct TfLiteTensor TfLiteTensor;
struct TfLiteOpaqueDelegateBuilder;

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
} Recorder;

static void record(const Recorder* recorder, const char* line) {
  if (recorder->record_to[0] == '\0') return;
  FILE* f = fopen(recorder->record_to, "a");
  if (f == NULL) return;
  fputs(line, f);
  fputc('\n', f);
  fclose(f);
}

/* Asked to take nodes: it takes none (no ReplaceNodeSubsetsWithDelegateKernels call). */
static TfLiteStatus Prepare(TfLiteContext* context, TfLiteDelegate* delegate) {
  (void)context;
  Recorder* recorder = (Recorder*)delegate->data_;
  record(recorder, "prepare");
  return recorder->fail_prepare ? kTfLiteError : kTfLiteOk;
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
    }
    size_t used = strlen(line);
    snprintf(line + used, sizeof(line) - used, " %s=%s", keys[i], values[i]);
  }
  record(recorder, line);
  delegate->data_ = recorder;
  delegate->Prepare = Prepare;
  delegate->flags = 0;
  return delegate;
}

void tflite_plugin_destroy_delegate(TfLiteDelegate* delegate) {
  if (delegate == NULL) return;
  Recorder* recorder = (Recorder*)delegate->data_;
  record(recorder, "destroy");
  free(recorder);
  free(delegate);
}
