/*
 * example: load a model, describe it, predict once, list the models, unload it.
 *
 *     example SOCKET MODEL_PATH [NAME]
 *
 * The inputs are 0, 1, 2, ... in the model's own data type (dynamic dimensions set to 1),
 * sent by position without metadata; float32 outputs are printed as numbers.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "edge_agent_client.h"

static int report(const char *what, ea_error *err)
{
    fprintf(stderr, "%s: %s: %s\n", what, ea_status_name(err->code),
            err->message ? err->message : "(no message)");
    int code = err->code;
    ea_error_clear(err);
    return code;
}

static void print_shape(const int32_t *shape, size_t ndim)
{
    printf("[");
    for (size_t d = 0; d < ndim; d++)
        printf("%s%d", d ? "," : "", (int)shape[d]);
    printf("]");
}

/* Inputs 0, 1, 2... of the model's type and shape (-1 dimensions as 1), one buffer each. */
static int make_inputs(const ea_model *model, ea_input *inputs, void **buffers)
{
    for (size_t i = 0; i < model->n_inputs; i++) {
        const ea_tensor_info *info = &model->inputs[i];
        size_t count = 1, size = ea_data_type_size(info->data_type);
        for (size_t d = 0; d < info->ndim; d++)
            count *= info->shape[d] < 0 ? 1 : (size_t)info->shape[d];
        if (size == 0)
            return -1;
        unsigned char *data = calloc(count, size);
        if (data == NULL)
            return -1;
        for (size_t k = 0; k < count; k++) {
            if (info->data_type == EA_FLOAT32) {
                float v = (float)k;
                memcpy(data + k * size, &v, size);
            } else {
                data[k * size] = (unsigned char)k; /* the low byte: little-endian */
            }
        }
        buffers[i] = data;
        /* No name, no data type, no shape: the model's own are assumed. */
        inputs[i] = ea_input_bytes(NULL, EA_DTYPE_UNSET, NULL, 0, data, count * size);
    }
    return 0;
}

int main(int argc, char **argv)
{
    if (argc < 3) {
        fprintf(stderr, "usage: %s SOCKET MODEL_PATH [NAME]\n", argv[0]);
        return 2;
    }
    const char *name = argc > 3 ? argv[3] : "example";
    ea_error err = EA_ERROR_INIT;
    ea_client *agent;
    if (ea_connect(argv[1], 2000, 30000, &agent, &err) != EA_OK)
        return report("connect", &err);

    int rc = 1;
    ea_model model = {0};
    ea_model_list list = {0};
    ea_tensors outputs = {0};
    ea_input *inputs = NULL;
    void **buffers = NULL;
    if (ea_load_model(agent, name, argv[2], &model, &err) != EA_OK) {
        rc = report("load", &err);
        goto done;
    }
    printf("loaded %s (%s)\n", model.name, model.delegate);
    inputs = calloc(model.n_inputs + 1, sizeof *inputs);
    buffers = calloc(model.n_inputs + 1, sizeof *buffers);
    if (inputs == NULL || buffers == NULL || make_inputs(&model, inputs, buffers) != 0) {
        fprintf(stderr, "cannot make the inputs\n");
        goto done;
    }
    if (ea_predict(agent, name, inputs, model.n_inputs, NULL, 0, &outputs, &err) != EA_OK) {
        rc = report("predict", &err);
        goto done;
    }
    for (size_t i = 0; i < outputs.count; i++) {
        const ea_tensor *t = &outputs.tensors[i];
        printf("output %s type %d shape ", t->name, t->data_type);
        print_shape(t->shape, t->ndim);
        if (t->data_type == EA_FLOAT32) {
            printf(" values");
            for (size_t k = 0; k < t->nbytes / 4; k++) {
                float v;
                memcpy(&v, (const char *)t->data + 4 * k, 4);
                printf(" %.9g", v);
            }
        }
        printf("\n");
    }
    if (ea_list_models(agent, &list, &err) != EA_OK) {
        rc = report("list", &err);
        goto done;
    }
    for (size_t i = 0; i < list.count; i++)
        printf("model %s %s\n", list.models[i].name, list.models[i].url);
    if (ea_unload_model(agent, name, &err) != EA_OK) {
        rc = report("unload", &err);
        goto done;
    }
    printf("unloaded %s\n", name);
    rc = 0;
done:
    for (size_t i = 0; buffers != NULL && i < model.n_inputs; i++)
        free(buffers[i]);
    free(buffers);
    free(inputs);
    ea_tensors_free(&outputs);
    ea_model_list_free(&list);
    ea_model_free(&model);
    ea_close(agent);
    return rc;
}
