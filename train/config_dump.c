// Walks of the key table that write: the effective config as YAML (config_dump, config_save), the key reference
// (config_print_help), and the model hash.
#include "train/config_internal.h"
#include "train/check.h"
#include <errno.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

// A double-quoted YAML string (libyaml reads the escapes back).
static void write_string(FILE *out, const char *s) {
    fputc('"', out);
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        if (*p == '"' || *p == '\\') fprintf(out, "\\%c", *p);
        else if (*p < 0x20 || *p == 0x7f) fprintf(out, "\\x%02x", *p);
        else fputc(*p, out);
    }
    fputc('"', out);
}

static void write_schedule(FILE *out, const Schedule *s) {
    char a[40], b[40];
    config_format_double(s->start, a, sizeof a);
    if (s->n_phases == 0) { fprintf(out, " %s\n", a); return; }
    fprintf(out, "\n    start: %s\n    phases:\n", a);
    for (int i = 0; i < s->n_phases; i++) {
        const Phase *p = &s->phases[i];
        config_format_double(p->to, a, sizeof a);
        config_format_double(p->until_tokens, b, sizeof b);
        if (p->until_steps > 0)   // written as given; the resolved token count is a comment
            fprintf(out, "      - {shape: %s, until_steps: %.0f, to: %s}  # ends at %.0f tokens\n",
                    config_phase_shapes[p->shape], p->until_steps, a, p->until_tokens);
        else
            fprintf(out, "      - {shape: %s, until_tokens: %s, to: %s}\n", config_phase_shapes[p->shape], b, a);
    }
}

static void write_value(FILE *out, const ConfigKey *k, const void *field) {
    char num[40];
    switch (k->type) {
    case KEY_INT: fprintf(out, " %d\n", *(const int *)field); break;
    case KEY_LONG: fprintf(out, " %ld\n", *(const long *)field); break;
    case KEY_U64: fprintf(out, " %llu\n", *(const unsigned long long *)field); break;
    case KEY_DOUBLE: config_format_double(*(const double *)field, num, sizeof num); fprintf(out, " %s\n", num); break;
    case KEY_BOOL: fprintf(out, " %s\n", *(const int *)field ? "true" : "false"); break;
    case KEY_STRING: fputc(' ', out); write_string(out, field); fputc('\n', out); break;
    case KEY_ENUM: {
        int v = *(const int *)field, n = 0;
        while (k->values[n]) n++;
        CHECK(v >= 0 && v < n, "%s.%s holds %d, not a value of its enum", k->section, k->name, v);
        fprintf(out, " %s\n", k->values[v]);
        break;
    }
    case KEY_SCHEDULE: write_schedule(out, field); break;
    }
}

void config_dump(const Config *cfg, FILE *out) {
    fprintf(out, "# Effective configuration%s%s: every key (build/train --help-config describes them).\n",
            cfg->source_path[0] ? " from " : "", cfg->source_path);
    const char *section = "";
    for (int i = 0; i < config_n_keys; i++) {
        const ConfigKey *k = &config_keys[i];
        if (strcmp(k->section, section) != 0) fprintf(out, "%s:\n", section = k->section);
        fprintf(out, "  %s:", k->name);
        write_value(out, k, config_field_c(cfg, k));
    }
}

void config_print_help(FILE *out) {
    fprintf(out,
        "Configuration keys. A config file is YAML with the sections below; any key can be overridden on the\n"
        "command line with --set section.key=value (repeatable, applied after the file, checked the same way).\n"
        "Defaults are the DeepSeek-V3 671B recipe where it fixes a number; the layout defaults to one CPU process.\n"
        "Numbers may be written 1e-4, 14.8e12, 15360 or 1.5e4 (integers must be integral). Paths are relative to\n"
        "the working directory.\n"
        "\n"
        "A schedule (type schedule) is a number (constant) or a start value and a list of phases:\n"
        "    lr:\n"
        "      start: 0.0\n"
        "      phases:\n"
        "        - {shape: linear, until_steps: 2000, to: 2.2e-4}\n"
        "        - {shape: constant, until_tokens: 10.0e12, to: 2.2e-4}\n"
        "        - {shape: cosine, until_tokens: 14.3e12, to: 2.2e-5}\n"
        "Each phase ends at until_steps or until_tokens (exactly one; ends must increase) and moves from the value\n"
        "at the end of the previous phase (start for the first) to `to`: linear, cosine (half cosine), or constant\n"
        "(`to` throughout). After the last phase the value stays at its `to`. A step takes the value at the tokens\n"
        "consumed before it, so a phase ending at N tokens no longer applies to the step starting at N tokens.\n"
        "Steps become tokens through the batch\n"
        "ramp: batch(tokens) = batch_start + (batch_end - batch_start) * tokens / batch_ramp_tokens, rounded down to\n"
        "a multiple of micro_batch * dp, and batch_end once tokens >= batch_ramp_tokens.\n");
    const char *section = "";
    for (int i = 0; i < config_n_keys; i++) {
        const ConfigKey *k = &config_keys[i];
        if (strcmp(k->section, section) != 0) fprintf(out, "\n%s:\n", section = k->section);
        char expect[512];
        config_describe(k, expect, sizeof expect, 0);
        const char *q = k->type == KEY_STRING ? "\"" : "";
        fprintf(out, "  %s.%s (%s, default %s%s%s): %s\n", k->section, k->name, config_type_name(k->type), q, k->def,
                q, k->help);
        fprintf(out, "      expects %s\n", expect);
    }
}

unsigned long long config_fnv1a(unsigned long long h, const void *data, size_t n) {
    const unsigned char *p = data;
    for (size_t i = 0; i < n; i++) { h ^= p[i]; h *= 0x100000001b3ULL; }
    return h;
}

static unsigned long long hash_u64(unsigned long long h, unsigned long long v) {
    unsigned char b[8];   // little-endian whatever the host
    for (int i = 0; i < 8; i++) b[i] = (unsigned char)(v >> (8 * i));
    return config_fnv1a(h, b, 8);
}

unsigned long long config_model_hash(const ModelConfig *m) {
    unsigned long long h = CONFIG_FNV_OFFSET;
    for (int i = 0; i < config_n_keys; i++) {
        const ConfigKey *k = &config_keys[i];
        if (strcmp(k->section, "model") != 0) continue;
        const void *field = (const char *)m + (k->offset - offsetof(Config, model));
        h = config_fnv1a(h, k->name, strlen(k->name) + 1);
        switch (k->type) {
        case KEY_INT: case KEY_BOOL: case KEY_ENUM:
            h = hash_u64(h, (unsigned long long)(long long)*(const int *)field);
            break;
        case KEY_LONG: h = hash_u64(h, (unsigned long long)(long long)*(const long *)field); break;
        case KEY_U64: h = hash_u64(h, *(const unsigned long long *)field); break;
        case KEY_DOUBLE: {
            double v = *(const double *)field;
            unsigned long long bits;
            if (v == 0) v = 0;   // -0 and +0 are the same value
            memcpy(&bits, &v, 8);
            h = hash_u64(h, bits);
            break;
        }
        case KEY_STRING: h = config_fnv1a(h, field, strlen(field) + 1); break;
        case KEY_SCHEDULE: die("internal: schedule %s.%s in the model section", k->section, k->name);
        }
    }
    return h;
}

// mkdir -p of the directories above `path`.
static void make_parents(const char *path) {
    char buf[CONFIG_PATH_MAX + 64];
    if (strlen(path) >= sizeof buf) die("%s: path too long", path);
    strcpy(buf, path);
    for (char *p = buf + 1; *p; p++) {
        if (*p != '/') continue;
        *p = 0;
        if (mkdir(buf, 0777) != 0 && errno != EEXIST) die("cannot create directory %s: %s", buf, strerror(errno));
        *p = '/';
    }
}

void config_save(const Config *cfg, const char *path) {
    make_parents(path);
    char tmp[CONFIG_PATH_MAX + 64];
    snprintf(tmp, sizeof tmp, "%s.tmp.%d", path, (int)getpid());
    FILE *f = fopen(tmp, "w");
    if (!f) die("cannot write %s: %s", tmp, strerror(errno));
    config_dump(cfg, f);
    if (fflush(f) != 0 || ferror(f) || fsync(fileno(f)) != 0) {
        int e = errno;
        fclose(f);
        unlink(tmp);
        die("cannot write %s: %s", tmp, strerror(e));
    }
    if (fclose(f) != 0) { int e = errno; unlink(tmp); die("cannot close %s: %s", tmp, strerror(e)); }
    if (rename(tmp, path) != 0) {
        int e = errno;
        unlink(tmp);
        die("cannot rename %s to %s: %s", tmp, path, strerror(e));
    }
}
