// The backend-independent pieces of kernels/backend.c (BF16 rounding, tensor views, dtype sizes, backend_get) and
// the cpu backend's table and memory ops.
#include "kernels/ops.h"
#include "tests/ops_testutil.h"
#include "tests/test.h"

static const Backend *cpu(void) { return backend_get("cpu"); }

static uint16_t bits_bf16(float x) { return bf16_from_f32(x); }
static float f32_of_bits(uint32_t u) {
    float x;
    memcpy(&x, &u, 4);
    return x;
}

TEST(ops_bf16_round_to_nearest_even) {
    // 1 + 2^-8 lies exactly between bf16 1.0 (0x3F80) and 1 + 2^-7 (0x3F81): the tie goes to the even 0x3F80.
    ASSERT_EQ_INT(bits_bf16(f32_of_bits(0x3F808000u)), 0x3F80);
    // 1 + 3 * 2^-8 lies between 0x3F81 and 0x3F82: the tie goes to the even 0x3F82.
    ASSERT_EQ_INT(bits_bf16(f32_of_bits(0x3F818000u)), 0x3F82);
    // Just above a tie rounds up; just below rounds down.
    ASSERT_EQ_INT(bits_bf16(f32_of_bits(0x3F808001u)), 0x3F81);
    ASSERT_EQ_INT(bits_bf16(f32_of_bits(0x3F817FFFu)), 0x3F81);
    // Negative tie: magnitude rounds to even as well.
    ASSERT_EQ_INT(bits_bf16(f32_of_bits(0xBF808000u)), 0xBF80);
    // NaNs stay NaN with their sign: plain rounding would turn 0x7F800001 (low mantissa bits only) into Inf and
    // carry 0x7FFFFFFF into the sign bit.
    ASSERT_EQ_INT(bits_bf16(f32_of_bits(0x7F800001u)), 0x7FC0);
    ASSERT_EQ_INT(bits_bf16(f32_of_bits(0xFF800001u)), 0xFFC0);
    ASSERT_EQ_INT(bits_bf16(f32_of_bits(0x7FFFFFFFu)) & 0x7F80, 0x7F80);
    ASSERT((bits_bf16(f32_of_bits(0x7FFFFFFFu)) & 0x007F) != 0);
    // Infinity is exact; the largest float rounds up into infinity (round to nearest even, as torch does).
    ASSERT_EQ_INT(bits_bf16(INFINITY), 0x7F80);
    ASSERT_EQ_INT(bits_bf16(f32_of_bits(0x7F7FFFFFu)), 0x7F80);
    // Back to FP32: exact.
    ASSERT(bf16_to_f32(0x3F82) == 1.015625f);
    ASSERT(bf16_to_f32(0xC040) == -3.0f);
    ASSERT(isnan(bf16_to_f32(0x7FC0)));
}

TEST(ops_tensor_views_and_dtype_sizes) {
    ASSERT_EQ_INT(dtype_size(DT_F32), 4);
    ASSERT_EQ_INT(dtype_size(DT_BF16), 2);
    ASSERT_EQ_INT(dtype_size(DT_I32), 4);
    ASSERT_EQ_INT(dtype_size(DT_F8E4M3), 1);
    float buf[24];
    Tensor t = tensor_3d(buf, DT_F32, 2, 3, 4);
    ASSERT_EQ_INT(t.ndim, 3);
    ASSERT_EQ_INT(tensor_numel(&t), 24);
    Tensor r = tensor_reshape2(t, 6, 4);
    ASSERT(r.ndim == 2 && r.shape[0] == 6 && r.shape[1] == 4 && r.data == buf);
    Tensor rows = tensor_rows(t, 1, 2); // second (3, 4) block
    ASSERT(rows.data == buf + 12 && rows.shape[0] == 1 && rows.shape[1] == 3 && rows.shape[2] == 4);
    uint16_t hb[10];
    Tensor h = tensor_rows(tensor_2d(hb, DT_BF16, 5, 2), 3, 5);
    ASSERT(h.data == hb + 6 && h.shape[0] == 2);
    Tensor q = tensor_4d(buf, DT_F32, 1, 2, 3, 4);
    ASSERT_EQ_INT(tensor_numel(&q), 24);
}

static void die_reshape(void *unused) {
    (void)unused;
    static float b[6];
    tensor_reshape2(tensor_2d(b, DT_F32, 2, 3), 4, 2);
}
static void die_rows(void *unused) {
    (void)unused;
    static float b[6];
    tensor_rows(tensor_2d(b, DT_F32, 2, 3), 1, 3);
}
static void die_cuda(void *unused) {
    (void)unused;
    backend_get("cuda");
}
static void die_unknown_backend(void *unused) {
    (void)unused;
    backend_get("tpu");
}

TEST(ops_backend_get_and_view_errors) {
    ASSERT_EQ_STR(backend_get("cpu")->name, "cpu");
    ASSERT(backend_get("cpu") == &backend_cpu);
    EXPECT_DIE(die_reshape, NULL, "tensor_reshape2: cannot view 6 elements as (4, 2)");
    EXPECT_DIE(die_rows, NULL, "tensor_rows: rows [1, 3) out of range for 2 rows");
    EXPECT_DIE(die_unknown_backend, NULL, "unknown backend \"tpu\" (expected \"cpu\" or \"cuda\")");
#ifndef USE_CUDA
    EXPECT_DIE(die_cuda, NULL, "this build has no CUDA backend: rebuild on a machine with nvcc");
#else
    (void)die_cuda;
#endif
}

// Every entry of the cpu table is filled (a NULL would only show up as a crash deep inside the model).
TEST(ops_cpu_table_is_complete) {
    const Backend *b = &backend_cpu;
#define HAS(f) ASSERT_MSG(b->f != NULL, "backend_cpu." #f " is NULL")
    HAS(alloc); HAS(free); HAS(upload); HAS(download); HAS(copy); HAS(zero); HAS(synchronize);
    HAS(matmul_forward); HAS(matmul_forward_residual); HAS(matmul_backward); HAS(grouped_matmul_forward);
    HAS(grouped_matmul_backward); HAS(convert);
    HAS(rmsnorm_forward); HAS(rmsnorm_backward); HAS(swiglu_forward); HAS(swiglu_backward); HAS(axpy);
    HAS(copy_cols); HAS(embedding_forward); HAS(embedding_backward); HAS(cross_entropy_forward_backward);
    HAS(rope_apply); HAS(mla_kv_assemble); HAS(mla_kv_assemble_backward); HAS(attention_forward);
    HAS(attention_backward); HAS(moe_route); HAS(moe_route_backward); HAS(moe_balance_loss);
    HAS(moe_dispatch_plan); HAS(moe_gather); HAS(moe_gather_backward); HAS(moe_combine);
    HAS(moe_combine_backward); HAS(sum_squares); HAS(scale); HAS(adamw_update);
#undef HAS
}

TEST(ops_cpu_memory) {
    const Backend *b = cpu();
    unsigned char *p = b->alloc(1000);
    ASSERT(((uintptr_t)p & 63) == 0);
    for (int i = 0; i < 1000; i++) ASSERT(p[i] == 0);
    unsigned char src[1000], back[1000];
    for (int i = 0; i < 1000; i++) src[i] = (unsigned char)(i * 7);
    b->upload(p, src, 1000);
    unsigned char *q = b->alloc(1000);
    b->copy(q, p, 1000);
    b->download(back, q, 1000);
    ASSERT(memcmp(back, src, 1000) == 0);
    b->zero(q + 10, 20);
    b->download(back, q, 1000);
    for (int i = 0; i < 1000; i++) ASSERT(back[i] == (i >= 10 && i < 30 ? 0 : src[i]));
    b->synchronize();
    b->free(p);
    b->free(q);
    void *z = b->alloc(0); // a zero-byte allocation is a valid, freeable pointer
    ASSERT(z != NULL);
    b->free(z);
}
