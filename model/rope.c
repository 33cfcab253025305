// Rotary embedding tables and the attention softmax scale, on the host at model_create.
//
// Plain RoPE: angle(t, i) = t * theta^(-2i / rope_dim), i in [0, rope_dim / 2), t the position in the sequence.
// YaRN (context extension), applied whenever model.rope_scaling = yarn (Hugging Face semantics; the official code
// applies it only when its max_seq_len exceeds original_seq_len), as the official DeepSeek-V3 precompute_freqs_cis and the Hugging Face "yarn" rope do:
//   low  = max(floor(corr(beta_fast)), 0), high = min(ceil(corr(beta_slow)), rope_dim - 1),
//   corr(r) = rope_dim * ln(original_seq_len / (r * 2 pi)) / (2 ln theta),
//   ramp_i = clamp((i - low) / (high - low), 0, 1)   (high bumped by 0.001 when equal to low),
//   freq_i = freq_i / factor * ramp_i + freq_i * (1 - ramp_i)   (high-frequency pairs keep theirs),
// and the softmax scale 1/sqrt(nope + rope) is multiplied by mscale^2, mscale = 0.1 * mscale_coef * ln(factor) + 1.
// (HF also multiplies cos/sin by yarn_mscale(factor, mscale) / yarn_mscale(factor, mscale_all_dim) = 1, because
// DeepSeek-V3's config has mscale == mscale_all_dim; our config has one mscale key for both.)
#include "model/model_impl.h"

#include "train/check.h"

#include <math.h>

static double yarn_correction_dim(double rotations, int dim, double base, int max_seq_len) {
    return dim * log(max_seq_len / (rotations * 2 * M_PI)) / (2 * log(base));
}

static double yarn_mscale(const ModelConfig *mc) {
    if (mc->rope_scaling != ROPE_YARN || mc->rope_factor <= 1) return 1.0;
    return 0.1 * mc->mscale * log(mc->rope_factor) + 1.0;
}

void rope_inv_freq(const ModelConfig *mc, double *freq) {
    int dim = mc->qk_rope_head_dim, half = dim / 2;
    // The references compute theta^(2i/dim) in float32: round the exponent and the result the same way.
    for (int i = 0; i < half; i++) freq[i] = 1.0 / (float)pow(mc->rope_theta, (double)(float)(2.0 * i / dim));
    if (mc->rope_scaling != ROPE_YARN) return;
    double low = floor(yarn_correction_dim(mc->beta_fast, dim, mc->rope_theta, mc->original_seq_len));
    double high = ceil(yarn_correction_dim(mc->beta_slow, dim, mc->rope_theta, mc->original_seq_len));
    if (low < 0) low = 0;
    if (high > dim - 1) high = dim - 1;
    if (low == high) high += 0.001;
    for (int i = 0; i < half; i++) {
        double ramp = (i - low) / (high - low);
        ramp = ramp < 0 ? 0 : ramp > 1 ? 1 : ramp;
        freq[i] = freq[i] / mc->rope_factor * ramp + freq[i] * (1 - ramp);
    }
}

void rope_tables(const ModelConfig *mc, int T, float *cos_out, float *sin_out) {
    int half = mc->qk_rope_head_dim / 2;
    double *freq = xmalloc((size_t)half * sizeof(double));
    rope_inv_freq(mc, freq);
    // angle = position * inv_freq, formed in float32 as the references do, then cos/sin in double
    for (int t = 0; t < T; t++)
        for (int i = 0; i < half; i++) {
            double a = (float)((float)t * (float)freq[i]);
            cos_out[(int64_t)t * half + i] = (float)cos(a);
            sin_out[(int64_t)t * half + i] = (float)sin(a);
        }
    free(freq);
}

float rope_softmax_scale(const ModelConfig *mc) {
    double s = 1.0 / sqrt((double)(mc->qk_nope_head_dim + mc->qk_rope_head_dim));
    double ms = yarn_mscale(mc);
    return (float)(s * ms * ms);
}
