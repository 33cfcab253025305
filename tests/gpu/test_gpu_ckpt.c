// Checkpoints and Hugging Face export / import with the model state in cuda device memory: every transfer streams
// through the backend's download / upload in row blocks, so these are the paths a GPU run takes. A state saved from
// device memory loads bit for bit into device memory and into host (cpu) memory, and the reverse; an HF export
// from device memory imports back into device memory exactly. Tensors larger than one row block included.
#include "tests/gpu/gpu_testutil.h"
#include "tests/ckpt_testutil.h"
#include "tests/model_configs.h"
#include "train/ckpt.h"
#include "train/hf_io.h"

// The same state as a host TState, in device buffers.
typedef struct {
    float *params;
    uint16_t *m, *v;
} DevState;

static DevState dev_from(const TState *s) {
    DevState d;
    size_t n = (size_t)s->t.total;
    d.params = G->alloc(n * 4);
    d.m = G->alloc(n * 2);
    d.v = G->alloc(n * 2);
    G->upload(d.params, s->params, n * 4);
    G->upload(d.m, s->m, n * 2);
    G->upload(d.v, s->v, n * 2);
    return d;
}

static void dev_to(const DevState *d, TState *s) {
    size_t n = (size_t)s->t.total;
    G->download(s->params, d->params, n * 4);
    G->download(s->m, d->m, n * 2);
    G->download(s->v, d->v, n * 2);
}

static ModelConfig gpu_model(void) {
    ModelConfig m = test_model_tiny();
    m.group_score_topk = 2;
    m.vocab_size = 33000;   // 33000 x 32 embedding and head: more than one CKPT_CHUNK_ELEMS row block
    m.dim = 32;
    return m;
}

TEST(gpu_ckpt_save_load_device_memory) {
    gt_init(3);
    ModelConfig mc = gpu_model();
    TState s, got;
    tstate_create(&s, &mc, params_full_stage(&mc));
    tstate_fill(&s, 5);
    DevState d = dev_from(&s);
    char root[4400], path[4400], why[256];
    snprintf(root, sizeof root, "%s/ck", test_tmpdir());
    // Save from device memory.
    CkptStage st = {.table = &s.t, .be = G, .params = d.params, .adam_m = d.m, .adam_v = d.v, .adam_t = s.adam_t,
                    .bias = s.bias, .n_bias = s.n_bias};
    CkptRankState rs = {.step = 3, .rank = 0, .world = 1};
    CkptOptions o = {.root = root, .model = &mc, .keep_last = 2};
    ckpt_save(&o, &st, &rs);
    ckpt_path(root, 3, path, sizeof path);
    ASSERT_MSG(ckpt_verify(path, why, sizeof why), "%s", why);
    // Load into fresh device memory, and into host memory through the cpu backend.
    tstate_create(&got, &mc, params_full_stage(&mc));
    DevState e = dev_from(&got);   // zeros
    Ckpt *c = ckpt_open(path);
    CkptStage ld = {.table = &got.t, .be = G, .params = e.params, .adam_m = e.m, .adam_v = e.v, .bias = got.bias,
                    .n_bias = got.n_bias};
    ckpt_load_stage(c, &ld);
    dev_to(&e, &got);
    got.adam_t = ld.adam_t;
    ASSERT_MSG(tstate_subset_equal(&s, &got, why, sizeof why), "device -> file -> device: %s", why);
    ASSERT_EQ_INT(ld.adam_t, s.adam_t);
    TState host;
    tstate_create(&host, &mc, params_full_stage(&mc));
    CkptStage lh = tstate_stage(&host, 0, 0);
    ckpt_load_stage(c, &lh);
    ckpt_close(c);
    ASSERT_MSG(tstate_subset_equal(&s, &host, why, sizeof why), "device -> file -> host: %s", why);
    tstate_free(&s);
    tstate_free(&got);
    tstate_free(&host);
}

TEST(gpu_hf_export_import_device_memory) {
    gt_init(4);
    ModelConfig mc = gpu_model();
    TState s, got;
    tstate_create(&s, &mc, params_full_stage(&mc));
    tstate_fill(&s, 6);
    DevState d = dev_from(&s);
    char dir[4400], why[256];
    snprintf(dir, sizeof dir, "%s/hf", test_tmpdir());
    HfExportOptions o = {.dtype = HF_F32, .max_shard_bytes = 1 << 22};
    hf_export_memory(&mc, &s.t, G, d.params, s.bias, dir, &o);
    tstate_create(&got, &mc, params_full_stage(&mc));
    DevState e = dev_from(&got);
    hf_import(dir, &mc, &got.t, G, e.params, got.bias, got.n_bias);
    G->download(got.params, e.params, (size_t)got.t.total * 4);
    memcpy(got.m, s.m, (size_t)s.t.total * 2);   // moments are not part of an HF export
    memcpy(got.v, s.v, (size_t)s.t.total * 2);
    ASSERT_MSG(tstate_subset_equal(&s, &got, why, sizeof why), "%s", why);
    tstate_free(&s);
    tstate_free(&got);
}
