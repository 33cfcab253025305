// The model against Hugging Face transformers' DeepseekV3ForCausalLM (tests/fixtures/hf_ref, see its README):
// weights loaded by HF name, the same tokens, then logits, loss, every parameter gradient and every routing
// decision compared. Fixture A: q_lora path + plain RoPE; fixture B: q_proj (q_lora_rank 0) + YaRN.
//
// Tolerance: 1e-4 of each tensor's largest reference magnitude, elementwise (max |c - ref| / max |ref|), as the
// fixture README advises: HF's own FP32 numbers differ from float64 by up to ~7e-7 of the tensor maximum, and our
// FP32 summation orders differ from HF's, so 1e-4 leaves a wide margin while any formula error (a wrong scale,
// a missing term, a transposed weight) moves values by far more than that. All-zero reference tensors (idle
// experts) must be exactly zero.
#include "model/model_impl.h"
#include "tests/test.h"
#include "train/check.h"

#include <hdf5.h>
#include <math.h>
#include <string.h>

#define HF_TOL 1e-4

static int64_t attr_i64(hid_t f, const char *name) {
    int64_t v = 0;
    hid_t a = H5_CHECK(H5Aopen_by_name(f, "/config", name, H5P_DEFAULT, H5P_DEFAULT));
    H5_CHECK(H5Aread(a, H5T_NATIVE_INT64, &v));
    H5_CHECK(H5Aclose(a));
    return v;
}

static double attr_f64(hid_t f, const char *name) {
    double v = 0;
    hid_t a = H5_CHECK(H5Aopen_by_name(f, "/config", name, H5P_DEFAULT, H5P_DEFAULT));
    H5_CHECK(H5Aread(a, H5T_NATIVE_DOUBLE, &v));
    H5_CHECK(H5Aclose(a));
    return v;
}

static void attr_str(hid_t f, const char *name, char *buf, size_t cap) {
    hid_t a = H5_CHECK(H5Aopen_by_name(f, "/config", name, H5P_DEFAULT, H5P_DEFAULT));
    hid_t t = H5_CHECK(H5Aget_type(a));
    size_t n = H5Tget_size(t);
    CHECK(n > 0 && n < cap, "attribute %s: string of %zu bytes", name, n);
    memset(buf, 0, cap);
    H5_CHECK(H5Aread(a, t, buf));
    H5_CHECK(H5Tclose(t));
    H5_CHECK(H5Aclose(a));
}

static int ds_exists(hid_t f, const char *path) { return H5_CHECK(H5Lexists(f, path, H5P_DEFAULT)) > 0; }

// Reads a dataset of exactly `numel` elements as `mem_type` into a new buffer.
static void *ds_read(hid_t f, const char *path, hid_t mem_type, size_t elem, int64_t numel) {
    hid_t d = H5_CHECK(H5Dopen2(f, path, H5P_DEFAULT));
    hid_t s = H5_CHECK(H5Dget_space(d));
    int64_t n = H5_CHECK(H5Sget_simple_extent_npoints(s));
    ASSERT_MSG(n == numel, "%s: %lld elements in the fixture, %lld expected", path, (long long)n, (long long)numel);
    void *buf = xmalloc((size_t)numel * elem + 1);
    H5_CHECK(H5Dread(d, mem_type, H5S_ALL, H5S_ALL, H5P_DEFAULT, buf));
    H5_CHECK(H5Sclose(s));
    H5_CHECK(H5Dclose(d));
    return buf;
}
static float *ds_f32(hid_t f, const char *path, int64_t numel) {
    return ds_read(f, path, H5T_NATIVE_FLOAT, sizeof(float), numel);
}

// The fixture's /config attributes (our ModelConfig names) as a Config.
static Config fixture_config(hid_t f, int *B, int *T) {
    Config c;
    memset(&c, 0, sizeof c);
    ModelConfig *m = &c.model;
    m->vocab_size = (int)attr_i64(f, "vocab_size");
    m->dim = (int)attr_i64(f, "dim");
    m->inter_dim = (int)attr_i64(f, "inter_dim");
    m->moe_inter_dim = (int)attr_i64(f, "moe_inter_dim");
    m->n_layers = (int)attr_i64(f, "n_layers");
    m->n_dense_layers = (int)attr_i64(f, "n_dense_layers");
    m->n_heads = (int)attr_i64(f, "n_heads");
    m->n_routed_experts = (int)attr_i64(f, "n_routed_experts");
    m->n_shared_experts = (int)attr_i64(f, "n_shared_experts");
    m->n_activated_experts = (int)attr_i64(f, "n_activated_experts");
    m->n_expert_groups = (int)attr_i64(f, "n_expert_groups");
    m->n_limited_groups = (int)attr_i64(f, "n_limited_groups");
    m->group_score_topk = (int)attr_i64(f, "group_score_topk");
    m->route_scale = attr_f64(f, "route_scale");
    m->q_lora_rank = (int)attr_i64(f, "q_lora_rank");
    m->kv_lora_rank = (int)attr_i64(f, "kv_lora_rank");
    m->qk_nope_head_dim = (int)attr_i64(f, "qk_nope_head_dim");
    m->qk_rope_head_dim = (int)attr_i64(f, "qk_rope_head_dim");
    m->v_head_dim = (int)attr_i64(f, "v_head_dim");
    m->mtp_depth = (int)attr_i64(f, "mtp_depth");
    m->norm_eps = attr_f64(f, "norm_eps");
    m->rope_theta = attr_f64(f, "rope_theta");
    m->rope_factor = attr_f64(f, "rope_factor");
    m->beta_fast = attr_f64(f, "beta_fast");
    m->beta_slow = attr_f64(f, "beta_slow");
    m->mscale = attr_f64(f, "mscale");
    m->original_seq_len = (int)attr_i64(f, "original_seq_len");
    m->init_std = 0.02;
    char s[64];
    attr_str(f, "score_func", s, sizeof s);
    ASSERT_EQ_STR(s, "sigmoid");
    m->score_func = SCORE_SIGMOID;
    attr_str(f, "rope_scaling", s, sizeof s);
    m->rope_scaling = strcmp(s, "yarn") == 0 ? ROPE_YARN : ROPE_NONE;
    // Our one mscale plays both HF roles; the fixtures use equal values when YaRN is on (README, difference 2).
    if (m->rope_scaling == ROPE_YARN) ASSERT_NEAR(attr_f64(f, "mscale_all_dim"), m->mscale, 0, 0);
    ASSERT_EQ_INT(attr_i64(f, "group_score_topk"), 2);
    *B = (int)attr_i64(f, "batch");
    *T = (int)attr_i64(f, "seq_len");
    return c;
}

// max |c - ref| / max |ref| (or max |c| when the reference is all zero, which must then be exactly 0).
static double rel_err(const float *c, const float *ref, int64_t n, double *ref_max) {
    double dmax = 0, rmax = 0;
    for (int64_t i = 0; i < n; i++) {
        double d = fabs((double)c[i] - ref[i]);
        if (!(d <= dmax)) dmax = d;   // NaN-propagating max
        if (fabs(ref[i]) > rmax) rmax = fabs(ref[i]);
    }
    *ref_max = rmax;
    return rmax > 0 ? dmax / rmax : dmax;
}

static int is_packed_expert(const char *name) {
    const char *p = strstr(name, ".mlp.experts.");
    return p && (strcmp(p, ".mlp.experts.gate_up_proj") == 0 || strcmp(p, ".mlp.experts.down_proj") == 0);
}

// The packed tensors must hold exactly the per-expert ones we loaded: gate_up_proj [E, 2*mi, d] = [gate_e ; up_e],
// down_proj [E, d, mi] = down_e (so every fixture weight is accounted for).
static void check_packed(hid_t f, const char *group, const char *name, const ModelConfig *mc) {
    int layer;
    char proj[32];
    ASSERT(sscanf(name, "model.layers.%d.mlp.experts.%31s", &layer, proj) == 2);
    int64_t E = mc->n_routed_experts, mi = mc->moe_inter_dim, d = mc->dim;
    int n_parts = strcmp(proj, "gate_up_proj") == 0 ? 2 : 1;   // [gate ; up] or down
    ASSERT(n_parts == 2 || strcmp(proj, "down_proj") == 0);
    static const char *const parts[2][2] = {{"down_proj", ""}, {"gate_proj", "up_proj"}};
    char path[320];
    snprintf(path, sizeof path, "/%s/%s", group, name);
    float *packed = ds_f32(f, path, E * n_parts * mi * d);
    for (int64_t e = 0; e < E; e++)
        for (int q = 0; q < n_parts; q++) {
            snprintf(path, sizeof path, "/%s/model.layers.%d.mlp.experts.%lld.%s.weight", group, layer, (long long)e,
                     parts[n_parts - 1][q]);
            float *one = ds_f32(f, path, mi * d);
            const float *src = packed + (e * n_parts + q) * mi * d;
            ASSERT_MSG(memcmp(one, src, (size_t)(mi * d) * sizeof(float)) == 0, "%s differs from %s", path, name);
            free(one);
        }
    free(packed);
}

// Every name under /weights (or /grads) is a table parameter, a layer's selection bias, or a packed expert tensor.
static void check_all_used(hid_t f, const char *group, const ParamTable *t, const ModelConfig *mc) {
    char path[64];
    snprintf(path, sizeof path, "/%.32s", group);
    hid_t g = H5_CHECK(H5Gopen2(f, path, H5P_DEFAULT));
    H5G_info_t info;
    H5_CHECK(H5Gget_info(g, &info));
    int n_table = 0;
    for (hsize_t i = 0; i < info.nlinks; i++) {
        char name[256];
        H5_CHECK(H5Lget_name_by_idx(g, ".", H5_INDEX_NAME, H5_ITER_INC, i, name, sizeof name, H5P_DEFAULT));
        if (params_find(t, name)) n_table++;
        else if (is_packed_expert(name)) check_packed(f, group, name, mc);
        else ASSERT_MSG(strstr(name, ".mlp.gate.e_score_correction_bias") && strcmp(group, "weights") == 0,
                        "fixture tensor /%s/%s is not used by the model", group, name);
    }
    ASSERT_EQ_INT(n_table, t->n);
    H5_CHECK(H5Gclose(g));
}

static void run_fixture(const char *file, int recompute) {
    hid_t f = H5_CHECK(H5Fopen(test_path(file), H5F_ACC_RDONLY, H5P_DEFAULT));
    int B, T;
    Config cfg = fixture_config(f, &B, &T);
    cfg.train.recompute = recompute;
    const ModelConfig *mc = &cfg.model;
    const Backend *be = backend_get("cpu");
    Model *m = model_create(&cfg, be, params_full_stage(mc), B, T);
    const ParamTable *t = model_params(m);
    int N = B * T, V = mc->vocab_size, K = mc->n_activated_experts, E = mc->n_routed_experts;

    // Weights: every table entry from the fixture, by name.
    for (int i = 0; i < t->n; i++) {
        const ParamInfo *p = &t->params[i];
        char path[256];
        snprintf(path, sizeof path, "/weights/%s", p->name);
        ASSERT_MSG(ds_exists(f, path), "table parameter %s is not in %s", p->name, file);
        float *w = ds_f32(f, path, p->numel);
        be->upload(model_param_data(m) + p->offset, w, (size_t)p->numel * sizeof(float));
        free(w);
    }
    check_all_used(f, "weights", t, mc);
    check_all_used(f, "grads", t, mc);
    ASSERT_EQ_INT(model_n_moe_layers(m), mc->n_layers - mc->n_dense_layers);
    for (int i = 0; i < model_n_moe_layers(m); i++) {
        int layer = model_moe_layer_index(m, i);
        char path[256];
        snprintf(path, sizeof path, "/weights/model.layers.%d.mlp.gate.e_score_correction_bias", layer);
        float *b = ds_f32(f, path, E);
        snprintf(path, sizeof path, "/bias/%d", layer);
        float *b2 = ds_f32(f, path, E);
        ASSERT(memcmp(b, b2, (size_t)E * sizeof(float)) == 0);
        memcpy(model_expert_bias(m, i), b, (size_t)E * sizeof(float));
        free(b);
        free(b2);
    }

    int32_t *tokens = ds_read(f, "/tokens", H5T_NATIVE_INT32, sizeof(int32_t), (int64_t)B * (T + 1));
    float *ref_loss = ds_f32(f, "/loss", 1);
    model_set_route_mode(m, ROUTE_RECORD);
    MicroLosses L;
    model_step(m, tokens, 1.0f, 0.0f, 0.0f, &L);
    double loss_err = fabs(L.lm_loss - ref_loss[0]) / fabs(ref_loss[0]);
    ASSERT_MSG(loss_err <= HF_TOL, "%s: loss %.9g vs HF %.9g", file, L.lm_loss, ref_loss[0]);
    ASSERT_NEAR(L.total, L.lm_loss, 0, 0);

    // Routing: the same experts for every token of every MoE layer, in the same order (both list them by
    // descending biased score; the fixture's selection margins are >= 1e-4, far above FP32 differences).
    for (int i = 0; i < model_n_moe_layers(m); i++) {
        char path[256];
        snprintf(path, sizeof path, "/routing/%d/topk_idx", model_moe_layer_index(m, i));
        int32_t *ref = ds_read(f, path, H5T_NATIVE_INT32, sizeof(int32_t), (int64_t)N * K);
        const int32_t *got = m->record + (int64_t)i * N * K;
        for (int n = 0; n < N; n++)
            for (int k = 0; k < K; k++)
                ASSERT_MSG(got[n * K + k] == ref[n * K + k], "%s layer %d token %d slot %d: HF chose expert %d, the "
                           "model %d", file, model_moe_layer_index(m, i), n, k, ref[n * K + k], got[n * K + k]);
        int64_t total = 0;
        for (int e = 0; e < E; e++) total += model_expert_counts(m, i)[e];
        ASSERT_EQ_INT(total, (int64_t)N * K);
        free(ref);
    }

    // Gradients, every parameter.
    double worst = 0;
    const char *worst_name = "";
    float *grad = xmalloc(sizeof(float));
    for (int i = 0; i < t->n; i++) {
        const ParamInfo *p = &t->params[i];
        char path[256];
        snprintf(path, sizeof path, "/grads/%s", p->name);
        float *ref = ds_f32(f, path, p->numel);
        grad = xrealloc(grad, (size_t)p->numel * sizeof(float));
        be->download(grad, model_grad_data(m) + p->offset, (size_t)p->numel * sizeof(float));
        double rmax, err = rel_err(grad, ref, p->numel, &rmax);
        if (rmax == 0) ASSERT_MSG(err == 0, "%s: %s gradient should be exactly zero, max |g| = %g", file, p->name, err);
        ASSERT_MSG(err <= HF_TOL, "%s: gradient of %s: max |diff| / max |ref| = %.3g", file, p->name, err);
        if (err > worst) { worst = err; worst_name = p->name; }
        free(ref);
    }

    // Logits (forward only, same weights and tokens).
    float *logits = xmalloc((size_t)N * V * sizeof(float));
    model_forward_logits(m, tokens, logits);
    float *ref_logits = ds_f32(f, "/logits", (int64_t)N * V);
    double lmax, logit_err = rel_err(logits, ref_logits, (int64_t)N * V, &lmax);
    ASSERT_MSG(logit_err <= HF_TOL, "%s: logits max |diff| / max |ref| = %.3g", file, logit_err);
    printf("    %s (recompute %d): loss rel %.2e, logits %.2e, worst gradient %.2e (%s)\n", file, recompute,
           loss_err, logit_err, worst, worst_name);

    free(grad);
    free(logits);
    free(ref_logits);
    free(tokens);
    free(ref_loss);
    model_free(m);
    H5_CHECK(H5Fclose(f));
}

TEST(hf_reference_fixture_a) { run_fixture("tests/fixtures/hf_ref/fixture_a.h5", 0); }
TEST(hf_reference_fixture_b_yarn_q_proj) { run_fixture("tests/fixtures/hf_ref/fixture_b.h5", 1); }

// RoPE tables and softmax scale against HF's (fixture B's YaRN, fixture A's plain), and the 671B YaRN frequencies,
// whose ramp has fractional entries the tiny rope dim cannot show.
TEST(hf_reference_rope_tables) {
    const char *files[2] = {"tests/fixtures/hf_ref/fixture_a.h5", "tests/fixtures/hf_ref/fixture_b.h5"};
    for (int fi = 0; fi < 2; fi++) {
        hid_t f = H5_CHECK(H5Fopen(test_path(files[fi]), H5F_ACC_RDONLY, H5P_DEFAULT));
        int B, T;
        Config cfg = fixture_config(f, &B, &T);
        int half = cfg.model.qk_rope_head_dim / 2;
        float *c = xmalloc((size_t)T * half * sizeof(float)), *s = xmalloc((size_t)T * half * sizeof(float));
        rope_tables(&cfg.model, T, c, s);
        float *rc = ds_f32(f, "/rope/cos", (int64_t)T * half), *rs = ds_f32(f, "/rope/sin", (int64_t)T * half);
        for (int i = 0; i < T * half; i++) {
            ASSERT_NEAR(c[i], rc[i], 0, 1e-6);
            ASSERT_NEAR(s[i], rs[i], 0, 1e-6);
        }
        ASSERT_NEAR(rope_softmax_scale(&cfg.model), attr_f64(f, "softmax_scale"), 1e-6, 0);
        if (fi == 1) {
            ModelConfig big = cfg.model;
            hid_t g = H5_CHECK(H5Gopen2(f, "/rope_671b", H5P_DEFAULT));
            hid_t a = H5_CHECK(H5Aopen(g, "rope_factor", H5P_DEFAULT));
            H5_CHECK(H5Aread(a, H5T_NATIVE_DOUBLE, &big.rope_factor));
            H5_CHECK(H5Aclose(a));
            int64_t orig, rope;
            a = H5_CHECK(H5Aopen(g, "original_seq_len", H5P_DEFAULT));
            H5_CHECK(H5Aread(a, H5T_NATIVE_INT64, &orig));
            H5_CHECK(H5Aclose(a));
            a = H5_CHECK(H5Aopen(g, "qk_rope_head_dim", H5P_DEFAULT));
            H5_CHECK(H5Aread(a, H5T_NATIVE_INT64, &rope));
            H5_CHECK(H5Aclose(a));
            H5_CHECK(H5Gclose(g));
            big.original_seq_len = (int)orig;
            big.qk_rope_head_dim = (int)rope;
            ASSERT_EQ_INT(rope, 64);
            ASSERT_NEAR(big.rope_factor, 40, 0, 0);
            double freq[32];
            rope_inv_freq(&big, freq);
            float *ref = ds_f32(f, "/rope_671b/inv_freq", 32);
            for (int i = 0; i < 32; i++) ASSERT_NEAR(freq[i], ref[i], 1e-6, 0);
            // the ramp is partial in the middle: neither the plain nor the fully interpolated frequency
            ASSERT(freq[15] < 0.999 * pow(1e4, -30.0 / 64) && freq[15] > 1.001 * pow(1e4, -30.0 / 64) / 40);
            free(ref);
        }
        free(c); free(s); free(rc); free(rs);
        H5_CHECK(H5Fclose(f));
    }
}
