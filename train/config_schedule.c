// Schedules over the token counter: the batch ramp, step -> token resolution, and schedule evaluation.
//
// Everything is a function of the tokens consumed BEFORE a step, which the trainer keeps exactly (a double holding
// integers below 2^53 = 9e15 tokens) and which a checkpoint stores, so schedules resume where they stopped whatever
// the batch size did in between.
#include "train/config_internal.h"
#include "train/check.h"
#include <math.h>
#include <string.h>

#define EXACT_TOKENS 9007199254740992.0   // 2^53: token counts above this are no longer exact in a double

long config_batch_size(const Config *cfg, double tokens) {
    const TrainConfig *t = &cfg->train;
    if (t->batch_ramp_tokens <= 0 || tokens >= t->batch_ramp_tokens) return t->batch_end;
    long unit = (long)t->micro_batch * cfg->parallel.dp;
    // One product and one division, so that e.g. the exact middle of the ramp gives the exact middle batch.
    double raw = (double)t->batch_start + (double)(t->batch_end - t->batch_start) * tokens / t->batch_ramp_tokens;
    long b = (long)floor(raw / (double)unit) * unit;
    if (b < t->batch_start) b = t->batch_start;
    if (b > t->batch_end) b = t->batch_end;
    return b;
}

double config_tokens_after_steps(const Config *cfg, long steps) {
    const TrainConfig *t = &cfg->train;
    const double ramp = t->batch_ramp_tokens, span = (double)(t->batch_end - t->batch_start);
    const long unit = (long)t->micro_batch * cfg->parallel.dp;
    double tokens = 0;
    long done = 0;
    while (done < steps) {
        if (ramp <= 0 || tokens >= ramp || span == 0)   // constant batch from here on
            return tokens + (double)(steps - done) * (double)config_batch_size(cfg, tokens) * t->seq_len;
        long b = config_batch_size(cfg, tokens);
        double per_step = (double)b * t->seq_len;
        // The batch stays b at least until the linear ramp reaches b + unit (or the ramp ends). Jump over the
        // steps that certainly start before that point, one step short of it, and let single steps (the same
        // arithmetic as the trainer's) cross the level boundary. Sums of integers below 2^53 are exact, so the
        // jump equals the step-by-step sum.
        double next_level = (double)(b + unit - t->batch_start) * ramp / span;
        double gap = fmin(next_level, ramp) - tokens;
        long k = (long)floor(gap / per_step) - 1;
        if (k > steps - done) k = steps - done;
        if (k < 1) k = 1;
        tokens += (double)k * per_step;
        done += k;
    }
    return tokens;
}

double schedule_value(const Schedule *s, double tokens) {
    double from = s->start, begin = 0;
    for (int i = 0; i < s->n_phases; i++) {
        const Phase *p = &s->phases[i];
        if (tokens < p->until_tokens) {   // phase i covers [begin, until_tokens)
            double frac = (tokens - begin) / (p->until_tokens - begin);
            if (frac < 0) frac = 0;
            switch (p->shape) {
            case PHASE_CONSTANT: return p->to;
            case PHASE_LINEAR: return from + (p->to - from) * frac;
            case PHASE_COSINE: return p->to + (from - p->to) * (1 + cos(M_PI * frac)) / 2;
            }
        }
        from = p->to;
        begin = p->until_tokens;
    }
    return s->n_phases ? s->phases[s->n_phases - 1].to : s->start;
}

void config_resolve_schedules(Config *cfg, const LoadState *st) {
    for (int ki = 0; ki < config_n_keys; ki++) {
        const ConfigKey *k = &config_keys[ki];
        if (k->type != KEY_SCHEDULE) continue;
        Schedule *s = config_field(cfg, k);
        double prev = 0;
        for (int i = 0; i < s->n_phases; i++) {
            Phase *p = &s->phases[i];
            char dotted[160], end[96];
            snprintf(dotted, sizeof dotted, "%s.%s.phases[%d].%s", k->section, k->name, i,
                     p->until_steps > 0 ? "until_steps" : "until_tokens");
            if (p->until_steps > 0) {
                p->until_tokens = config_tokens_after_steps(cfg, (long)p->until_steps);
                snprintf(end, sizeof end, "step %.0f = %.6g tokens", p->until_steps, p->until_tokens);
            } else {
                snprintf(end, sizeof end, "%.6g tokens", p->until_tokens);
            }
            if (p->until_tokens > EXACT_TOKENS)
                config_fail(&st->phase[ki][i], dotted, NULL, "the phase ends at %s (expected at most 2^53 tokens, "
                            "the largest count a double holds exactly)", end);
            if (!(p->until_tokens > prev))
                config_fail(&st->phase[ki][i], dotted, NULL, "the phase ends at %s, not after the end of the "
                            "previous phase at %.6g tokens (expected increasing phase ends)", end, prev);
            prev = p->until_tokens;
        }
    }
}
