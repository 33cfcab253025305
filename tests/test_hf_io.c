// Hugging Face export / import: identity round trips (FP32 exact, BF16 = round-to-nearest-even), the safetensors
// byte layout, a checkpoint exported directly, the FP8 + 128x128 block-scale fixture made by torch, every bad input,
// and the fixture chain with transformers: the exported bytes of a fixed-seed tiny model hash as recorded, and our
// model's logits on them equal transformers' logits on the same directory.
#include "test.h"
#include "child_exit.h"
#include "ckpt_testutil.h"
#include "model/model.h"
#include "model_configs.h"
#include "train/ckpt.h"
#include "train/fsio.h"
#include "train/hf_io.h"
#include "train/json_util.h"

#include <hdf5.h>
#include <sys/stat.h>

// ---- SHA-256 (FIPS 180-4), for the fixture's file hashes ----

typedef struct { uint32_t h[8]; uint8_t buf[64]; uint64_t len; size_t n; } Sha256;
static const uint32_t SHA_K[64] = {
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5, 0xd807aa98,
    0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174, 0xe49b69c1, 0xefbe4786,
    0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da, 0x983e5152, 0xa831c66d, 0xb00327c8,
    0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967, 0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13,
    0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85, 0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819,
    0xd6990624, 0xf40e3585, 0x106aa070, 0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a,
    0x5b9cca4f, 0x682e6ff3, 0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7,
    0xc67178f2};
#define ROR(x, n) (((x) >> (n)) | ((x) << (32 - (n))))

static void sha_block(Sha256 *s, const uint8_t *p) {
    uint32_t w[64], a[8];
    for (int i = 0; i < 16; i++) w[i] = (uint32_t)p[4 * i] << 24 | p[4 * i + 1] << 16 | p[4 * i + 2] << 8 | p[4 * i + 3];
    for (int i = 16; i < 64; i++) {
        uint32_t s0 = ROR(w[i - 15], 7) ^ ROR(w[i - 15], 18) ^ (w[i - 15] >> 3);
        uint32_t s1 = ROR(w[i - 2], 17) ^ ROR(w[i - 2], 19) ^ (w[i - 2] >> 10);
        w[i] = w[i - 16] + s0 + w[i - 7] + s1;
    }
    memcpy(a, s->h, sizeof a);
    for (int i = 0; i < 64; i++) {
        uint32_t t1 = a[7] + (ROR(a[4], 6) ^ ROR(a[4], 11) ^ ROR(a[4], 25)) + ((a[4] & a[5]) ^ (~a[4] & a[6])) +
                      SHA_K[i] + w[i];
        uint32_t t2 = (ROR(a[0], 2) ^ ROR(a[0], 13) ^ ROR(a[0], 22)) + ((a[0] & a[1]) ^ (a[0] & a[2]) ^ (a[1] & a[2]));
        memmove(a + 1, a, 7 * sizeof *a);
        a[4] += t1;
        a[0] = t1 + t2;
    }
    for (int i = 0; i < 8; i++) s->h[i] += a[i];
}

static void sha256_hex(const uint8_t *data, size_t len, char out[65]) {
    Sha256 s = {{0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19}, {0}, 0, 0};
    size_t i = 0;
    for (; i + 64 <= len; i += 64) sha_block(&s, data + i);
    uint8_t tail[128] = {0};
    size_t r = len - i;
    memcpy(tail, data + i, r);
    tail[r] = 0x80;
    size_t tl = r + 9 <= 64 ? 64 : 128;
    uint64_t bits = (uint64_t)len * 8;
    for (int k = 0; k < 8; k++) tail[tl - 1 - k] = (uint8_t)(bits >> (8 * k));
    for (size_t k = 0; k < tl; k += 64) sha_block(&s, tail + k);
    for (int k = 0; k < 8; k++) snprintf(out + 8 * k, 9, "%08x", s.h[k]);
}

static void sha256_file(const char *path, char out[65]) {
    size_t n;
    char *d = fsio_read_small(path, &n);
    ASSERT_MSG(d, "cannot read %s", path);
    sha256_hex((const uint8_t *)d, n, out);
    free(d);
}

TEST(hf_io_sha256_reference_values) {
    char h[65];
    sha256_hex((const uint8_t *)"abc", 3, h);
    ASSERT_EQ_STR(h, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    const char *m = "abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq";   // 56 bytes: a two-block tail
    sha256_hex((const uint8_t *)m, strlen(m), h);
    ASSERT_EQ_STR(h, "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
}

// ---- helpers ----

static char *tmp_path(const char *name) {
    static char buf[8][4400];
    static int k;
    char *b = buf[k++ % 8];
    snprintf(b, 4400, "%s/%s", test_tmpdir(), name);
    return b;
}

static ModelConfig tiny(void) {
    ModelConfig m = test_model_tiny();   // 2 layers (dense, MoE), 4 experts, MTP 1
    m.group_score_topk = 2;
    m.original_seq_len = 64;
    return m;
}

// Bits of the BF16 rounding of x, round-to-nearest-even, computed independently of the library's converter.
static uint32_t rne_bf16_bits(float x) {
    uint32_t u;
    memcpy(&u, &x, 4);
    uint32_t lsb = (u >> 16) & 1;
    return ((u + 0x7FFF + lsb) >> 16) << 16;
}

static void import_into(const char *dir, TState *got) {
    hf_import(dir, &got->mc, &got->t, got->be, got->params, got->bias, got->n_bias);
}

TEST(hf_io_export_import_identity_fp32_sharded) {
    ModelConfig mc = tiny();
    TState s, got;
    tstate_create(&s, &mc, params_full_stage(&mc));
    tstate_fill(&s, 11);
    HfExportOptions o = {.dtype = HF_F32, .max_shard_bytes = 3000};   // many shards, an index
    hf_export_memory(&mc, &s.t, s.be, s.params, s.bias, tmp_path("hf"), &o);
    tstate_create(&got, &mc, params_full_stage(&mc));
    import_into(tmp_path("hf"), &got);
    // Bitwise: compare params and biases (the moments are not exported: copy them so the helper compares params).
    memcpy(got.m, s.m, (size_t)s.t.total * 2);
    memcpy(got.v, s.v, (size_t)s.t.total * 2);
    char why[256];
    ASSERT_MSG(tstate_subset_equal(&s, &got, why, sizeof why), "%s", why);

    // The index maps every tensor, with the MTP copies of the embedding and head, and the biases.
    size_t n;
    char *text = fsio_read_small(tmp_path("hf/model.safetensors.index.json"), &n);
    ASSERT(text);
    char err[256];
    Json *idx = json_parse(text, n, err, sizeof err);
    ASSERT_MSG(idx, "%s", err);
    free(text);
    const JsonValue *wm = json_get(json_root(idx), "weight_map");
    ASSERT(wm && (int)wm->n == s.t.n + 2 /* MoE layers 1 and 2 */ + 2 /* MTP copies */);
    ASSERT(json_get(wm, "model.layers.2.embed_tokens.weight") && json_get(wm, "model.layers.2.shared_head.head.weight"));
    ASSERT(json_get(wm, "model.layers.1.mlp.gate.e_score_correction_bias"));
    ASSERT(json_get(wm, "model.layers.2.mlp.gate.e_score_correction_bias"));
    ASSERT_EQ_STR(json_get(wm, "lm_head.weight")->str + strlen(json_get(wm, "lm_head.weight")->str) - 12, ".safetensors");
    int64_t total;
    ASSERT(json_as_int64(json_get(json_get(json_root(idx), "metadata"), "total_size"), &total));
    int64_t want_total = 4 * (params_numel(&s.t) + 2 * 4 + 2 * 16 * 8);
    ASSERT_EQ_INT(total, want_total);
    json_free(idx);
    // The copies hold the embedding and head values.
    HfDir *h = hf_open(tmp_path("hf"));
    float copy[16 * 8];
    hf_read_rows(h, "model.layers.2.embed_tokens.weight", 16, 8, 0, 16, copy);
    ASSERT(memcmp(copy, s.params + params_find(&s.t, "model.embed_tokens.weight")->offset, sizeof copy) == 0);
    hf_read_rows(h, "model.layers.2.shared_head.head.weight", 16, 8, 0, 16, copy);
    ASSERT(memcmp(copy, s.params + params_find(&s.t, "lm_head.weight")->offset, sizeof copy) == 0);
    hf_close(h);
    tstate_free(&s);
    tstate_free(&got);
}

TEST(hf_io_export_bf16_is_round_to_nearest_even) {
    ModelConfig mc = tiny();
    TState s, got;
    tstate_create(&s, &mc, params_full_stage(&mc));
    tstate_fill(&s, 12);
    // Hand-made ties in the first tensor: 1 + 2^-8 lies halfway between 1 and 1 + 2^-7 -> 1 (even mantissa);
    // 1 + 3 * 2^-8 halfway between 1 + 2^-7 and 1 + 2^-6 -> 1 + 2^-6; just above a tie rounds up.
    float *p0 = s.params + s.t.params[0].offset;
    p0[0] = 1.0f + 0x1p-8f;
    p0[1] = 1.0f + 3 * 0x1p-8f;
    p0[2] = 1.0f + 0x1p-8f + 0x1p-20f;
    p0[3] = -(1.0f + 0x1p-8f);
    HfExportOptions o = {.dtype = HF_BF16};
    hf_export_memory(&mc, &s.t, s.be, s.params, s.bias, tmp_path("hf"), &o);
    ASSERT(fsio_exists(tmp_path("hf/model.safetensors")) && !fsio_exists(tmp_path("hf/model.safetensors.index.json")));
    tstate_create(&got, &mc, params_full_stage(&mc));
    import_into(tmp_path("hf"), &got);
    const float *g0 = got.params + got.t.params[0].offset;
    ASSERT(g0[0] == 1.0f && g0[1] == 1.0f + 0x1p-6f && g0[2] == 1.0f + 0x1p-7f && g0[3] == -1.0f);
    for (int k = 0; k < s.t.n; k++) {
        const ParamInfo *p = &s.t.params[k];
        for (int64_t i = 0; i < p->numel; i++) {
            float a = s.params[p->offset + i], b = got.params[p->offset + i];
            uint32_t ub;
            memcpy(&ub, &b, 4);
            ASSERT_MSG(ub == rne_bf16_bits(a), "%s[%lld]: %.9g -> %.9g", p->name, (long long)i, a, b);
        }
    }
    for (int i = 0; i < s.n_bias; i++)   // the selection biases stay F32: exact
        ASSERT(memcmp(s.bias[i], got.bias[i], (size_t)s.E * 4) == 0);
    char *cfg = fsio_read_small(tmp_path("hf/config.json"), NULL);
    ASSERT_CONTAINS(cfg, "\"torch_dtype\": \"bfloat16\"");
    free(cfg);
    tstate_free(&s);
    tstate_free(&got);
}

TEST(hf_io_safetensors_byte_layout) {
    ModelConfig mc = tiny();
    TState s;
    tstate_create(&s, &mc, params_full_stage(&mc));
    tstate_fill(&s, 13);
    HfExportOptions o = {.dtype = HF_F32};
    hf_export_memory(&mc, &s.t, s.be, s.params, s.bias, tmp_path("hf"), &o);
    size_t n;
    uint8_t *f = (uint8_t *)fsio_read_small(tmp_path("hf/model.safetensors"), &n);
    ASSERT(f && n > 8);
    uint64_t hl = 0;
    for (int i = 7; i >= 0; i--) hl = hl << 8 | f[i];   // little-endian u64
    ASSERT(hl % 8 == 0 && 8 + hl < n && f[8] == '{');
    char err[256];
    Json *doc = json_parse((char *)f + 8, hl, err, sizeof err);   // trailing spaces are fine
    ASSERT_MSG(doc, "%s", err);
    const JsonValue *hdr = json_root(doc);
    ASSERT_EQ_STR(json_get(json_get(hdr, "__metadata__"), "format")->str, "pt");
    // Data offsets tile the data section exactly, and each tensor's bytes are its values (little-endian FP32).
    int64_t covered = 0;
    for (size_t i = 0; i < hdr->n; i++) {
        if (strcmp(hdr->keys[i], "__metadata__") == 0) continue;
        const JsonValue *e = &hdr->items[i], *off = json_get(e, "data_offsets");
        int64_t b, en;
        ASSERT(json_as_int64(&off->items[0], &b) && json_as_int64(&off->items[1], &en));
        ASSERT_EQ_STR(json_get(e, "dtype")->str, "F32");
        covered += en - b;
        const ParamInfo *p = params_find(&s.t, hdr->keys[i]);
        if (p) {
            const JsonValue *shape = json_get(e, "shape");
            ASSERT_EQ_INT((int)shape->n, p->ndim);
            ASSERT_EQ_INT((int64_t)shape->items[0].number, p->shape[0]);
            ASSERT_EQ_INT(en - b, p->numel * 4);
            ASSERT_MSG(memcmp(f + 8 + hl + b, s.params + p->offset, (size_t)(en - b)) == 0, "%s", hdr->keys[i]);
        }
    }
    ASSERT_EQ_INT(covered, (int64_t)(n - 8 - hl));
    json_free(doc);
    free(f);
    // config.json: the official DeepSeek-V3 fields.
    char *cfg = fsio_read_small(tmp_path("hf/config.json"), &n);
    Json *cdoc = json_parse(cfg, n, err, sizeof err);
    ASSERT_MSG(cdoc, "%s", err);
    const JsonValue *c = json_root(cdoc);
    ASSERT_EQ_STR(json_get(c, "model_type")->str, "deepseek_v3");
    ASSERT_EQ_STR(json_get(c, "architectures")->items[0].str, "DeepseekV3ForCausalLM");
    const struct { const char *k; double v; } want[] = {
        {"num_nextn_predict_layers", 1}, {"n_group", 1}, {"topk_group", 1}, {"routed_scaling_factor", 2.5},
        {"first_k_dense_replace", 1}, {"hidden_size", 8}, {"num_hidden_layers", 2}, {"q_lora_rank", 4},
        {"n_routed_experts", 4}, {"num_experts_per_tok", 2}, {"rope_theta", 10000}, {"max_position_embeddings", 64}};
    for (size_t i = 0; i < sizeof want / sizeof *want; i++) {
        const JsonValue *v = json_get(c, want[i].k);
        ASSERT_MSG(v && v->type == JSON_NUMBER && v->number == want[i].v, "config.json %s", want[i].k);
    }
    ASSERT(json_get(c, "norm_topk_prob")->type == JSON_TRUE && json_get(c, "rope_scaling")->type == JSON_NULL);
    ASSERT_EQ_STR(json_get(c, "torch_dtype")->str, "float32");
    json_free(cdoc);
    free(cfg);
    tstate_free(&s);
}

TEST(hf_io_yarn_config_round_trips) {
    ModelConfig mc = tiny();
    mc.rope_scaling = ROPE_YARN;
    mc.rope_factor = 40;
    mc.original_seq_len = 4096;
    mc.mscale = 1.0;
    char *cfg = hf_config_json(&mc, HF_F32);
    ASSERT_CONTAINS(cfg, "\"max_position_embeddings\": 163840");
    ASSERT_CONTAINS(cfg, "\"type\": \"yarn\"");
    free(cfg);
    TState s, got;
    tstate_create(&s, &mc, params_full_stage(&mc));
    tstate_fill(&s, 14);
    HfExportOptions o = {.dtype = HF_F32};
    hf_export_memory(&mc, &s.t, s.be, s.params, s.bias, tmp_path("hf"), &o);
    tstate_create(&got, &mc, params_full_stage(&mc));
    import_into(tmp_path("hf"), &got);   // hf_check_config accepts its own YaRN block
    tstate_free(&s);
    tstate_free(&got);
}

static int files_equal(const char *a, const char *b) {
    size_t na, nb;
    char *x = fsio_read_small(a, &na), *y = fsio_read_small(b, &nb);
    int eq = x && y && na == nb && memcmp(x, y, na) == 0;
    free(x);
    free(y);
    return eq;
}

TEST(hf_io_export_from_checkpoint_streams_every_stage) {
    // A checkpoint written by 2 pipeline stages x 2 expert slices (4 forked ranks) exports to exactly the bytes of
    // the same model exported from memory: the stage files are combined tensor by tensor.
    ModelConfig mc = tiny();
    ASSERT(tu_save_world(tmp_path("ck"), &mc, 2, 2, 21, 9, NULL, NULL));
    char ck[4400];
    ckpt_path(tmp_path("ck"), 9, ck, sizeof ck);
    HfExportOptions o = {.dtype = HF_BF16, .max_shard_bytes = 2000};
    hf_export_ckpt(ck, tmp_path("from_ckpt"), &o);
    TState full;
    tstate_create(&full, &mc, params_full_stage(&mc));
    tstate_fill(&full, 21);
    hf_export_memory(&mc, &full.t, full.be, full.params, full.bias, tmp_path("from_memory"), &o);
    char *out = NULL, cmd[9000];
    snprintf(cmd, sizeof cmd, "cd %s && ls", tmp_path("from_ckpt"));
    ASSERT_EQ_INT(test_run(cmd, &out), 0);
    int n_files = 0;
    for (char *tok = strtok(out, "\n"); tok; tok = strtok(NULL, "\n"), n_files++) {
        char a[4400], b[4400];
        snprintf(a, sizeof a, "%s/%s", tmp_path("from_ckpt"), tok);
        snprintf(b, sizeof b, "%s/%s", tmp_path("from_memory"), tok);
        ASSERT_MSG(files_equal(a, b), "%s differs", tok);
    }
    free(out);
    ASSERT_MSG(n_files > 3, "expected several shards, an index and config.json, got %d files", n_files);
    tstate_free(&full);
}

// ---- FP8 fixture (tests/fixtures/hf_io, made by torch: see make_fixtures.py) ----

static ModelConfig fp8_model(void) {
    // Mirrors FP8_CONFIG in make_fixtures.py.
    ModelConfig m = test_model_tiny();
    m.vocab_size = 32; m.dim = 136; m.inter_dim = 8; m.moe_inter_dim = 8; m.n_layers = 2; m.n_dense_layers = 1;
    m.n_heads = 1; m.n_routed_experts = 2; m.n_shared_experts = 1; m.n_activated_experts = 1;
    m.n_expert_groups = 1; m.n_limited_groups = 1; m.group_score_topk = 2; m.route_scale = 2.5;
    m.q_lora_rank = 0; m.kv_lora_rank = 136; m.qk_nope_head_dim = 8; m.qk_rope_head_dim = 8; m.v_head_dim = 8;
    m.mtp_depth = 0; m.norm_eps = 1e-6; m.rope_theta = 10000; m.rope_scaling = ROPE_NONE;
    return m;
}

static float e4m3_by_hand(int byte) {
    // Independent decode for the spot checks: the E4M3 codes the fixture planted, by their definition.
    switch (byte) {
    case 0x7E: return 448.0f;          // 0.1111.110: 2^(15-7) * 1.75
    case 0xFE: return -448.0f;
    case 0x01: return 0x1p-9f;         // smallest subnormal: 2^-6 * 1/8
    case 0x00: return 0.0f;
    case 0x80: return -0.0f;
    case 0x08: return 0x1p-6f;         // smallest normal
    case 0xB8: return -1.0f;           // 1.0111.000: 2^(7-7)
    }
    return NAN;
}

TEST(hf_io_import_fp8_block_scales_fixture) {
    ModelConfig mc = fp8_model();
    TState fp8, want;
    tstate_create(&fp8, &mc, params_full_stage(&mc));
    tstate_create(&want, &mc, params_full_stage(&mc));
    hf_import(test_path("tests/fixtures/hf_io/fp8"), &mc, &fp8.t, fp8.be, fp8.params, fp8.bias, fp8.n_bias);
    hf_import(test_path("tests/fixtures/hf_io/fp8_expected"), &mc, &want.t, want.be, want.params, want.bias,
              want.n_bias);
    char why[256];
    ASSERT_MSG(tstate_subset_equal(&want, &fp8, why, sizeof why), "dequantized FP8 != torch's: %s", why);
    // The planted edge codes, checked against their definition and the fixture's recorded scales.
    size_t n;
    char *text = fsio_read_small(test_path("tests/fixtures/hf_io/fp8/spot_checks.json"), &n);
    ASSERT(text);
    char err[256];
    Json *doc = json_parse(text, n, err, sizeof err);
    ASSERT_MSG(doc, "%s", err);
    free(text);
    const JsonValue *spots = json_root(doc);
    ASSERT_EQ_INT(spots->n, 8);
    for (size_t i = 0; i < spots->n; i++) {
        const JsonValue *sp = &spots->items[i];
        const ParamInfo *p = params_find(&fp8.t, json_get(sp, "name")->str);
        ASSERT(p);
        int64_t r = (int64_t)json_get(sp, "row")->number, c = (int64_t)json_get(sp, "col")->number;
        int byte = (int)json_get(sp, "byte")->number;
        float v = e4m3_by_hand(byte), scale = (float)json_get(sp, "scale_inv")->number;
        ASSERT_MSG(v == (float)json_get(sp, "fp8_value")->number, "code 0x%02x", byte);
        float got = fp8.params[p->offset + r * p->shape[1] + c];
        ASSERT_MSG(got == v * scale, "[%lld, %lld] code 0x%02x: %.9g, expected %.9g", (long long)r, (long long)c, byte,
                   got, v * scale);
    }
    json_free(doc);
    tstate_free(&fp8);
    tstate_free(&want);
}

// ---- bad inputs ----

// Writes a one-tensor safetensors file: name, dtype string, shape (ndim 1 or 2), `bytes` of data declared and
// `written` bytes actually present.
static void st_write_one(const char *path, const char *name, const char *dtype, int ndim, int64_t r, int64_t c,
                         int64_t bytes, int64_t written, uint8_t fill) {
    JsonBuf h = {0};
    json_buf_printf(&h, "{\"%s\":{\"dtype\":\"%s\",\"shape\":[%lld", name, dtype, (long long)r);
    if (ndim == 2) json_buf_printf(&h, ",%lld", (long long)c);
    json_buf_printf(&h, "],\"data_offsets\":[0,%lld]}}", (long long)bytes);
    while (h.len % 8) json_buf_printf(&h, " ");
    size_t total = 8 + h.len + (size_t)written;
    uint8_t *f = xcalloc(total, 1);
    for (int i = 0; i < 8; i++) f[i] = (uint8_t)((uint64_t)h.len >> (8 * i));
    memcpy(f + 8, h.s, h.len);
    memset(f + 8 + h.len, fill, (size_t)written);
    fsio_write_file(path, f, total, 0);
    free(f);
    json_buf_free(&h);
}

// Points tensor `name` of a sharded export at `shard` (same length as model-0000k-of-0000n.safetensors).
static void index_redirect(const char *dir, const char *name, const char *shard) {
    char path[4400];
    snprintf(path, sizeof path, "%s/model.safetensors.index.json", dir);
    size_t n;
    char *t = fsio_read_small(path, &n);
    ASSERT(t);
    char key[256];
    snprintf(key, sizeof key, "\"%s\": \"", name);
    char *at = strstr(t, key);
    ASSERT_MSG(at, "%s not in the index", name);
    at += strlen(key);
    ASSERT(strlen(shard) == strcspn(at, "\""));
    memcpy(at, shard, strlen(shard));
    fsio_write_file(path, t, n, 0);
    free(t);
}

static const char *g_bad_dir;
static ModelConfig g_bad_mc;
static void import_child(void *arg) {
    (void)arg;
    TState s;
    tstate_create(&s, &g_bad_mc, params_full_stage(&g_bad_mc));
    import_into(g_bad_dir, &s);
    printf("imported\n");
}

TEST(hf_io_import_bad_inputs_are_clear_errors) {
    ModelConfig mc = tiny();
    TState s;
    tstate_create(&s, &mc, params_full_stage(&mc));
    tstate_fill(&s, 31);
    const char *BAD = "model-99999-of-99999.safetensors";
    // {what to break, expected message parts}
    const struct { const char *tensor, *dtype; int ndim; int64_t r, c, bytes, written; uint8_t fill;
                   const char *msg1, *msg2; } cases[] = {
        {"model.norm.weight", "F32", 1, 9, 0, 36, 36, 0, "tensor model.norm.weight has shape [9], the model expects [8]",
         BAD},
        {"model.norm.weight", "F16", 1, 8, 0, 16, 16, 0, "tensor model.norm.weight has dtype F16", BAD},
        {"model.norm.weight", "F32", 1, 8, 0, 32, 20, 0, "data_offsets outside the 20 data bytes", "truncated"},
        {"lm_head.weight", "F8_E4M3", 2, 16, 8, 128, 128, 0x38,
         "lm_head.weight is F8_E4M3 but its block scales lm_head.weight_scale_inv are missing", BAD},
        {"model.norm.weight", "BF16", 1, 8, 0, 16, 16, 0xFF, "tensor model.norm.weight has a non-finite value", BAD},
    };
    char msg[8192];
    g_bad_mc = mc;
    for (size_t k = 0; k < sizeof cases / sizeof *cases; k++) {
        char dir[64];
        snprintf(dir, sizeof dir, "bad%zu", k);
        HfExportOptions o = {.dtype = HF_F32, .max_shard_bytes = 1000};
        hf_export_memory(&mc, &s.t, s.be, s.params, s.bias, tmp_path(dir), &o);
        char shard[4400];
        snprintf(shard, sizeof shard, "%s/%s", tmp_path(dir), BAD);
        st_write_one(shard, cases[k].tensor, cases[k].dtype, cases[k].ndim, cases[k].r, cases[k].c, cases[k].bytes,
                     cases[k].written, cases[k].fill);
        index_redirect(tmp_path(dir), cases[k].tensor, BAD);
        g_bad_dir = tmp_path(dir);
        int st = child_exit_status(import_child, NULL, msg, sizeof msg);
        ASSERT_MSG(st == 1, "case %zu: exit %d\n%s", k, st, msg);
        ASSERT_CONTAINS(msg, cases[k].msg1);
        ASSERT_CONTAINS(msg, cases[k].msg2);
    }
    // A tensor the index does not list.
    hf_export_memory(&mc, &s.t, s.be, s.params, s.bias, tmp_path("missing"), &(HfExportOptions){.max_shard_bytes = 1000});
    char idx[4400];
    snprintf(idx, sizeof idx, "%s/model.safetensors.index.json", tmp_path("missing"));
    size_t n;
    char *t = fsio_read_small(idx, &n);
    char *at = strstr(t, "\"model.layers.1.mlp.experts.3.up_proj.weight\"");
    ASSERT(at);
    memcpy(at + 1, "xodel", 5);   // the key no longer names the tensor
    fsio_write_file(idx, t, n, 0);
    free(t);
    g_bad_dir = tmp_path("missing");
    ASSERT_EQ_INT(child_exit_status(import_child, NULL, msg, sizeof msg), 1);
    ASSERT_CONTAINS(msg, "tensor model.layers.1.mlp.experts.3.up_proj.weight is missing (not in "
                         "model.safetensors.index.json)");
    // A config.json for another model: every differing field listed with both values.
    hf_export_memory(&mc, &s.t, s.be, s.params, s.bias, tmp_path("other"), &(HfExportOptions){0});
    g_bad_mc.dim = 16;
    g_bad_mc.mtp_depth = 0;
    g_bad_mc.rope_scaling = ROPE_YARN;
    g_bad_dir = tmp_path("other");
    ASSERT_EQ_INT(child_exit_status(import_child, NULL, msg, sizeof msg), 1);
    ASSERT_CONTAINS(msg, "config.json does not match the model section of the config");
    ASSERT_CONTAINS(msg, "hidden_size = 8 in config.json, model.dim = 16 in the config");
    ASSERT_CONTAINS(msg, "num_nextn_predict_layers = 1 in config.json, model.mtp_depth = 0 in the config");
    ASSERT_CONTAINS(msg, "rope scaling = none in config.json, model.rope_scaling = yarn in the config");
    ASSERT(!strstr(msg, "imported"));
    // Not a directory / no weights.
    g_bad_mc = mc;
    g_bad_dir = tmp_path("nowhere");
    ASSERT_EQ_INT(child_exit_status(import_child, NULL, msg, sizeof msg), 1);
    ASSERT_CONTAINS(msg, "not a directory");
    tstate_free(&s);
}

static void export_over_child(void *arg) {
    ModelConfig mc = tiny();
    TState s;
    tstate_create(&s, &mc, params_full_stage(&mc));
    hf_export_memory(&mc, &s.t, s.be, s.params, s.bias, (const char *)arg, &(HfExportOptions){0});
}

TEST(hf_io_export_refuses_an_existing_directory) {
    fsio_mkdir(tmp_path("exists"));
    char msg[4096];
    ASSERT_EQ_INT(child_exit_status(export_over_child, tmp_path("exists"), msg, sizeof msg), 1);
    ASSERT_CONTAINS(msg, "already exists");
}

// ---- the transformers fixture chain ----

// The fixed-seed tiny model of tests/fixtures/hf_io/tiny_logits.h5 (the shape of tests/fixtures/hf_ref's fixture A
// plus one MTP module): its values are a pure function of the seed (integer arithmetic only), so every machine
// exports the same bytes.
static ModelConfig tiny_hf_model(void) {
    ModelConfig m = test_model_tiny();
    m.vocab_size = 64; m.dim = 32; m.inter_dim = 48; m.moe_inter_dim = 16; m.n_layers = 3; m.n_dense_layers = 1;
    m.n_heads = 2; m.n_routed_experts = 8; m.n_shared_experts = 1; m.n_activated_experts = 2;
    m.n_expert_groups = 4; m.n_limited_groups = 2; m.group_score_topk = 2; m.score_func = SCORE_SIGMOID;
    m.route_scale = 2.5; m.q_lora_rank = 16; m.kv_lora_rank = 16; m.qk_nope_head_dim = 8; m.qk_rope_head_dim = 4;
    m.v_head_dim = 8; m.mtp_depth = 1; m.norm_eps = 1e-6; m.init_std = 0.02; m.rope_theta = 10000;
    m.rope_scaling = ROPE_NONE; m.original_seq_len = 64;
    return m;
}
#define TINY_HF_SEED 1235

static void read_h5(hid_t f, const char *name, hid_t type, void *dst, size_t n_expected) {
    hid_t d = H5_CHECK(H5Dopen2(f, name, H5P_DEFAULT));
    hid_t sp = H5_CHECK(H5Dget_space(d));
    ASSERT_EQ_INT(H5Sget_simple_extent_npoints(sp), (long long)n_expected);
    H5_CHECK(H5Dread(d, type, H5S_ALL, H5S_ALL, H5P_DEFAULT, dst));
    H5_CHECK(H5Sclose(sp));
    H5_CHECK(H5Dclose(d));
}

static void read_attr_str(hid_t f, const char *name, char *buf, size_t cap) {
    hid_t a = H5_CHECK(H5Aopen(f, name, H5P_DEFAULT));
    hid_t t = H5_CHECK(H5Aget_type(a));
    ASSERT(H5Tis_variable_str(t) > 0);
    char *s = NULL;
    hid_t mt = H5_CHECK(H5Tcopy(H5T_C_S1));
    H5_CHECK(H5Tset_size(mt, H5T_VARIABLE));
    H5_CHECK(H5Tset_cset(mt, H5Tget_cset(t)));   // h5py writes UTF-8 strings
    H5_CHECK(H5Aread(a, mt, &s));
    snprintf(buf, cap, "%s", s);
    H5free_memory(s);
    H5_CHECK(H5Tclose(mt));
    H5_CHECK(H5Tclose(t));
    H5_CHECK(H5Aclose(a));
}

TEST(hf_io_transformers_logits) {
    ModelConfig mc = tiny_hf_model();
    TState s;
    tstate_create(&s, &mc, params_full_stage(&mc));
    tstate_fill(&s, TINY_HF_SEED);
    const char *gen = getenv("HF_IO_FIXTURE_DIR");   // set by make_fixtures.py to regenerate the fixture
    const char *dir = gen ? gen : tmp_path("tiny");
    hf_export_memory(&mc, &s.t, s.be, s.params, s.bias, dir, &(HfExportOptions){.dtype = HF_F32});
    if (gen) { tstate_free(&s); return; }

    hid_t f = H5_CHECK(H5Fopen(test_path("tests/fixtures/hf_io/tiny_logits.h5"), H5F_ACC_RDONLY, H5P_DEFAULT));
    // 1. The bytes transformers was given are the bytes we export today.
    char files[512], key[600], want[128], got[65];
    read_attr_str(f, "files", files, sizeof files);
    ASSERT_EQ_STR(files, "config.json model.safetensors");
    for (char *tok = strtok(files, " "); tok; tok = strtok(NULL, " ")) {
        snprintf(key, sizeof key, "sha256 %s", tok);
        read_attr_str(f, key, want, sizeof want);
        char path[4400];
        snprintf(path, sizeof path, "%s/%s", dir, tok);
        sha256_file(path, got);
        ASSERT_MSG(strcmp(want, got) == 0, "%s: sha256 %s, the fixture was made from %s (regenerate it with "
                   "tests/fixtures/hf_io/make_fixtures.py logits if the export format changed on purpose)", tok, got,
                   want);
    }
    // 2. Our model on the imported directory gives transformers' logits.
    enum { B = 2, T = 16, V = 64 };
    int32_t in[B * T], tokens[B * (T + 1 + 1)];
    static float ref[B * T * V], logits[B * T * V];
    read_h5(f, "tokens", H5T_NATIVE_INT32, in, B * T);
    read_h5(f, "logits", H5T_NATIVE_FLOAT, ref, B * T * V);
    H5_CHECK(H5Fclose(f));
    for (int b = 0; b < B; b++)
        for (int t = 0; t < T + 2; t++) tokens[b * (T + 2) + t] = t < T ? in[b * T + t] : 0;   // targets unused
    Config cfg;
    config_defaults(&cfg);
    cfg.model = mc;
    cfg.train.recompute = 0;
    Model *m = model_create(&cfg, &backend_cpu, params_full_stage(&mc), B, T);
    const ParamTable *t = model_params(m);
    int n_moe = model_n_moe_layers(m);
    float *bias[8];
    for (int i = 0; i < n_moe; i++) bias[i] = model_expert_bias(m, i);
    hf_import(dir, &mc, t, &backend_cpu, model_param_data(m), bias, n_moe);
    model_forward_logits(m, tokens, logits);
    double max_ref = 0, max_err = 0;
    for (int i = 0; i < B * T * V; i++) {
        if (fabs(ref[i]) > max_ref) max_ref = fabs(ref[i]);
        if (fabs(logits[i] - ref[i]) > max_err) max_err = fabs(logits[i] - ref[i]);
    }
    ASSERT_MSG(max_ref > 0.01, "fixture logits are degenerate (max %g)", max_ref);
    ASSERT_MSG(max_err <= 1e-4 * max_ref, "logits differ from transformers by %.3g (max |logit| %.3g)", max_err,
               max_ref);
    printf("    logits vs transformers: max |diff| %.3g, max |logit| %.3g\n", max_err, max_ref);
    model_free(m);
    tstate_free(&s);
}
