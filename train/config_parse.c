// From YAML text and nodes to typed Config fields, with the checks of one key: type, range, allowed values,
// the shape of a schedule. Every error names where the value came from (file:line:column or the --set argument),
// the dotted key, what was expected and what was found, then exits with status 1.
#include "train/config_internal.h"
#include "train/check.h"
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <string.h>

// ---- lookups and errors

int config_section_find(const char *section) {
    for (int i = 0; config_sections[i]; i++)
        if (strcmp(config_sections[i], section) == 0) return i;
    return -1;
}

int config_key_find(const char *section, const char *name) {
    for (int i = 0; i < config_n_keys; i++)
        if (strcmp(config_keys[i].section, section) == 0 && strcmp(config_keys[i].name, name) == 0) return i;
    return -1;
}

void config_where_str(const Where *w, char *buf, size_t n) {
    if (w->override) snprintf(buf, n, "--set %s", w->override);
    else if (w->file && w->line > 0) snprintf(buf, n, "%s:%d:%d", w->file, w->line, w->col);
    else if (w->file) snprintf(buf, n, "%s", w->file);
    else snprintf(buf, n, "defaults");
}

const char *config_type_name(KeyType t) {
    switch (t) {
    case KEY_INT: return "int";
    case KEY_LONG: return "long";
    case KEY_U64: return "u64";
    case KEY_DOUBLE: return "double";
    case KEY_BOOL: return "bool";
    case KEY_STRING: return "string";
    case KEY_ENUM: return "enum";
    case KEY_SCHEDULE: return "schedule";
    }
    return "?";
}

void config_fail(const Where *w, const char *dotted, const ConfigKey *k, const char *fmt, ...) {
    char where[CONFIG_PATH_MAX + 64], msg[2048], help[512] = "";
    config_where_str(w, where, sizeof where);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (k && k->type == KEY_SCHEDULE)   // its default is long: --help-config shows it
        snprintf(help, sizeof help, "\n    %s.%s (schedule): %s", k->section, k->name, k->help);
    else if (k)
        snprintf(help, sizeof help, "\n    %s.%s (%s, default %s): %s", k->section, k->name,
                 config_type_name(k->type), k->def, k->help);
    die("%s: %s: %s%s", where, dotted, msg, help);
}

// Levenshtein distance, for "did you mean" suggestions (names are short).
static int edit_distance(const char *a, const char *b) {
    int la = (int)strlen(a), lb = (int)strlen(b);
    if (la > 63 || lb > 63) return 1 << 20;
    int d[64][64];
    for (int i = 0; i <= la; i++) d[i][0] = i;
    for (int j = 0; j <= lb; j++) d[0][j] = j;
    for (int i = 1; i <= la; i++)
        for (int j = 1; j <= lb; j++) {
            int sub = d[i - 1][j - 1] + (a[i - 1] != b[j - 1]);
            int del = d[i - 1][j] + 1, ins = d[i][j - 1] + 1;
            d[i][j] = sub < del ? (sub < ins ? sub : ins) : (del < ins ? del : ins);
        }
    return d[la][lb];
}

const char *config_nearest(const char *s, const char *const *names, int n) {
    const char *best = NULL;
    int best_d = 1 << 20;
    for (int i = 0; n < 0 ? names[i] != NULL : i < n; i++) {
        int d = edit_distance(s, names[i]);
        if (d < best_d) { best_d = d; best = names[i]; }
    }
    int len = (int)strlen(s);
    int limit = len / 3 > 2 ? len / 3 : 2;   // a typo or two, more for long names
    return best && best_d <= limit && best_d < len ? best : NULL;
}

// ---- numbers

typedef enum { NUM_OK, NUM_NOT_NUMBER, NUM_NOT_INTEGER, NUM_OUT_OF_RANGE } NumStatus;

// Decimal numbers only: digits, sign, point, exponent ("1e-4", "14.8e12"); no hex, inf or nan.
static int looks_decimal(const char *s) {
    int digits = 0;
    if (!*s) return 0;
    for (const char *p = s; *p; p++) {
        if (*p >= '0' && *p <= '9') digits++;
        else if (!strchr("+-.eE", *p)) return 0;
    }
    return digits > 0;
}

static NumStatus parse_double(const char *s, double *out) {
    if (!looks_decimal(s)) return NUM_NOT_NUMBER;
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (*end) return NUM_NOT_NUMBER;
    if (errno == ERANGE || !isfinite(v)) return NUM_OUT_OF_RANGE;
    *out = v;
    return NUM_OK;
}

// Integers written plainly are converted exactly; "1.5e4" is accepted when the value is integral.
static NumStatus parse_integer(const char *s, long long *out) {
    if (!looks_decimal(s)) return NUM_NOT_NUMBER;
    if (!strpbrk(s, ".eE")) {
        char *end;
        errno = 0;
        long long v = strtoll(s, &end, 10);
        if (*end) return NUM_NOT_NUMBER;
        if (errno == ERANGE) return NUM_OUT_OF_RANGE;
        *out = v;
        return NUM_OK;
    }
    double v;
    NumStatus st = parse_double(s, &v);
    if (st != NUM_OK) return st;
    if (v != floor(v)) return NUM_NOT_INTEGER;
    if (fabs(v) >= 9.2e18) return NUM_OUT_OF_RANGE;
    *out = (long long)v;
    return NUM_OK;
}

static NumStatus parse_u64(const char *s, unsigned long long *out) {
    if (!looks_decimal(s)) return NUM_NOT_NUMBER;
    if (strchr(s, '-')) return NUM_OUT_OF_RANGE;
    if (!strpbrk(s, ".eE")) {
        char *end;
        errno = 0;
        unsigned long long v = strtoull(s, &end, 10);
        if (*end) return NUM_NOT_NUMBER;
        if (errno == ERANGE) return NUM_OUT_OF_RANGE;
        *out = v;
        return NUM_OK;
    }
    double v;
    NumStatus st = parse_double(s, &v);
    if (st != NUM_OK) return st;
    if (v != floor(v)) return NUM_NOT_INTEGER;
    if (v < 0 || v >= 18446744073709551616.0) return NUM_OUT_OF_RANGE;
    *out = (unsigned long long)v;
    return NUM_OK;
}

void config_format_double(double v, char *buf, size_t n) {
    if (v == floor(v) && fabs(v) < 1e7) { snprintf(buf, n, "%.0f", v); return; }   // 4096, 10000
    char tmp[48];
    for (int prec = 1; prec <= 17; prec++) {
        snprintf(tmp, sizeof tmp, "%.*g", prec, v);
        if (strtod(tmp, NULL) == v) break;
    }
    // "1.48e+13" -> "1.48e13", "1e-06" -> "1e-6": the way configs write them
    char *e = strchr(tmp, 'e');
    if (e) {
        char *d = e + 1, *s = e + 1;
        if (*s == '+') s++;
        else if (*s == '-') *d++ = *s++;
        while (*s == '0' && s[1]) s++;
        memmove(d, s, strlen(s) + 1);
    }
    snprintf(buf, n, "%s", tmp);
}

// What a number must be, e.g. "an integer >= 1", "a number > 0 and < 1". Upper bounds at the type's limit are
// left out unless `full`.
static void describe_number(char *buf, size_t n, int integer, double lo, int lo_open, double hi, int hi_open,
                            int full) {
    char a[40], b[40];
    config_format_double(lo, a, sizeof a);
    config_format_double(hi, b, sizeof b);
    int show_hi = isfinite(hi) && (full || hi < 1e9);
    snprintf(buf, n, "%s %s %s%s%s %s", integer ? "an integer" : "a number", lo_open ? ">" : ">=", a,
             show_hi ? " and " : "", show_hi ? (hi_open ? "<" : "<=") : "", show_hi ? b : "");
    size_t len = strlen(buf);
    while (len && buf[len - 1] == ' ') buf[--len] = 0;
}

// The expectation of key k, for messages and --help-config.
void config_describe(const ConfigKey *k, char *buf, size_t n, int full) {
    switch (k->type) {
    case KEY_INT: case KEY_LONG:
        describe_number(buf, n, 1, k->min, k->min_open, k->max, k->max_open, full);
        break;
    case KEY_U64: snprintf(buf, n, "an integer from 0 to 18446744073709551615"); break;
    case KEY_DOUBLE: describe_number(buf, n, 0, k->min, k->min_open, k->max, k->max_open, full); break;
    case KEY_BOOL: snprintf(buf, n, "true or false"); break;
    case KEY_STRING: snprintf(buf, n, "a string of at most %zu characters", k->size - 1); break;
    case KEY_ENUM: {
        size_t len = (size_t)snprintf(buf, n, "one of");
        for (int i = 0; k->values[i] && len < n; i++)
            len += (size_t)snprintf(buf + len, n - len, "%s %s", i ? "," : "", k->values[i]);
        break;
    }
    case KEY_SCHEDULE: {
        char num[160];
        describe_number(num, sizeof num, 0, k->min, k->min_open, k->max, k->max_open, full);
        snprintf(buf, n, "a schedule: %s, or {start, phases} whose start and every `to` is %s", num, num);
        break;
    }
    }
}

static const char *node_kind(const yaml_node_t *node) {
    return node->type == YAML_MAPPING_NODE ? "a mapping" : node->type == YAML_SEQUENCE_NODE ? "a sequence" : "a scalar";
}

// A number that must lie in [lo, hi] (bounds exclusive when *_open), as a double. `integer` requires an integer;
// its exact value (beyond 2^53 too) goes to *iout when iout is given.
static double number_in(const char *text, int integer, double lo, int lo_open, double hi, int hi_open,
                        const Where *w, const char *dotted, const ConfigKey *k, long long *iout) {
    char expect[160];
    double v = 0;
    NumStatus st;
    if (integer) {
        long long iv = 0;
        st = parse_integer(text, &iv);
        v = (double)iv;
        if (iout) *iout = iv;
    } else {
        st = parse_double(text, &v);
    }
    int below = lo_open ? !(v > lo) : !(v >= lo), above = hi_open ? !(v < hi) : !(v <= hi);
    int bad_range = st == NUM_OK && (below || above);
    if (st == NUM_OK && !bad_range) return v;
    // the upper bound is news only to a value above it
    describe_number(expect, sizeof expect, integer, lo, lo_open, hi, hi_open,
                    st == NUM_OUT_OF_RANGE || (st == NUM_OK && above));
    const char *why = st == NUM_NOT_NUMBER ? "" : st == NUM_NOT_INTEGER ? " (not an integer)"
                    : st == NUM_OUT_OF_RANGE ? " (out of range)" : "";
    if (st == NUM_NOT_NUMBER) config_fail(w, dotted, k, "expected %s, got \"%s\"", expect, text);
    config_fail(w, dotted, k, "expected %s, got %s%s", expect, text, why);
}

// ---- one key

static void set_scalar(Config *cfg, const ConfigKey *k, const char *text, const Where *w, const char *dotted) {
    void *field = config_field(cfg, k);
    char expect[256];
    config_describe(k, expect, sizeof expect, 1);
    switch (k->type) {
    case KEY_INT: case KEY_LONG: {   // bounds fit the type (INT_MAX, 1e18), so the checked value converts exactly
        long long v = 0;
        number_in(text, 1, k->min, k->min_open, k->max, k->max_open, w, dotted, k, &v);
        if (k->type == KEY_INT) *(int *)field = (int)v;
        else *(long *)field = (long)v;
        break;
    }
    case KEY_DOUBLE:
        *(double *)field = number_in(text, 0, k->min, k->min_open, k->max, k->max_open, w, dotted, k, NULL);
        break;
    case KEY_U64: {
        unsigned long long v = 0;
        NumStatus st = parse_u64(text, &v);
        if (st == NUM_NOT_NUMBER) config_fail(w, dotted, k, "expected %s, got \"%s\"", expect, text);
        if (st != NUM_OK) config_fail(w, dotted, k, "expected %s, got %s", expect, text);
        *(unsigned long long *)field = v;
        break;
    }
    case KEY_BOOL:
        if (strcmp(text, "true") == 0) *(int *)field = 1;
        else if (strcmp(text, "false") == 0) *(int *)field = 0;
        else config_fail(w, dotted, k, "expected %s, got \"%s\"", expect, text);
        break;
    case KEY_STRING:
        if (strlen(text) >= k->size)
            config_fail(w, dotted, k, "expected %s, got one of %zu characters", expect, strlen(text));
        memset(field, 0, k->size);   // zero the tail: dumps and round trips compare whole structs
        memcpy(field, text, strlen(text));
        break;
    case KEY_ENUM: {
        int found = -1;
        for (int i = 0; k->values[i]; i++)
            if (strcmp(text, k->values[i]) == 0) found = i;
        if (found < 0) config_fail(w, dotted, k, "expected %s, got \"%s\"", expect, text);
        *(int *)field = found;
        break;
    }
    case KEY_SCHEDULE:
        die("internal: schedule %s set as a scalar", dotted);
    }
}

// The text of a scalar node; anything else is a type error.
static const char *scalar_text(const yaml_node_t *node, const Where *w, const char *dotted, const ConfigKey *k,
                               const char *expect) {
    if (node->type != YAML_SCALAR_NODE) config_fail(w, dotted, k, "expected %s, got %s", expect, node_kind(node));
    const char *s = (const char *)node->data.scalar.value;
    if (strlen(s) != node->data.scalar.length) config_fail(w, dotted, k, "the value contains a NUL byte");
    return s;
}

static Where where_of(const Where *base, const yaml_node_t *node) {
    Where w = *base;
    if (w.file && !w.override) { w.line = (int)node->start_mark.line + 1; w.col = (int)node->start_mark.column + 1; }
    return w;
}

// Walks a mapping whose keys must come from `allowed` (NULL-terminated): calls back with each (key index, value).
// Unknown and duplicate keys are errors. vals[i] / wheres[i] receive the value node / key position of allowed[i].
static void read_mapping(yaml_document_t *doc, yaml_node_t *map, const char *const *allowed, yaml_node_t **vals,
                         Where *wheres, const Where *w, const char *dotted, const ConfigKey *k) {
    for (yaml_node_pair_t *p = map->data.mapping.pairs.start; p < map->data.mapping.pairs.top; p++) {
        yaml_node_t *kn = yaml_document_get_node(doc, p->key), *vn = yaml_document_get_node(doc, p->value);
        CHECK(kn && vn, "libyaml returned a mapping pair without nodes");
        Where kw = where_of(w, kn);
        const char *name = scalar_text(kn, &kw, dotted, k, "a key name");
        int idx = -1;
        for (int i = 0; allowed[i]; i++)
            if (strcmp(allowed[i], name) == 0) idx = i;
        if (idx < 0) {
            const char *near = config_nearest(name, allowed, -1);
            char list[256] = "";
            for (int i = 0; allowed[i]; i++)
                snprintf(list + strlen(list), sizeof list - strlen(list), "%s%s", i ? ", " : "", allowed[i]);
            if (near) config_fail(&kw, dotted, k, "unknown key \"%s\" (did you mean %s?); expected keys: %s", name,
                                  near, list);
            config_fail(&kw, dotted, k, "unknown key \"%s\"; expected keys: %s", name, list);
        }
        if (vals[idx] && wheres[idx].line)
            config_fail(&kw, dotted, k, "duplicate key \"%s\" (first given at line %d)", name, wheres[idx].line);
        if (vals[idx]) config_fail(&kw, dotted, k, "duplicate key \"%s\"", name);
        vals[idx] = vn;
        wheres[idx] = kw;
    }
}

static void set_schedule(Config *cfg, LoadState *st, int ki, yaml_document_t *doc, yaml_node_t *node,
                         const Where *w, const char *dotted) {
    const ConfigKey *k = &config_keys[ki];
    char expect[512], sub[160];
    config_describe(k, expect, sizeof expect, 0);
    Schedule s;
    Where pw[SCHEDULE_MAX_PHASES];
    memset(&s, 0, sizeof s);   // whole-struct zero (padding and unused phases too): round trips compare bytes
    memset(pw, 0, sizeof pw);
    if (node->type == YAML_SCALAR_NODE) {
        s.start = number_in(scalar_text(node, w, dotted, k, expect), 0, k->min, k->min_open, k->max, k->max_open,
                            w, dotted, k, NULL);
    } else if (node->type == YAML_MAPPING_NODE) {
        static const char *const top_keys[] = {"start", "phases", NULL};
        yaml_node_t *vals[2] = {NULL, NULL};
        Where kw[2];
        memset(kw, 0, sizeof kw);
        read_mapping(doc, node, top_keys, vals, kw, w, dotted, k);
        if (!vals[0]) config_fail(w, dotted, k, "missing start (the value before the first phase)");
        if (!vals[1]) config_fail(w, dotted, k, "missing phases (a list of {shape, until_steps | until_tokens, to})");
        snprintf(sub, sizeof sub, "%s.start", dotted);
        s.start = number_in(scalar_text(vals[0], &kw[0], sub, k, expect), 0, k->min, k->min_open, k->max,
                            k->max_open, &kw[0], sub, k, NULL);
        yaml_node_t *seq = vals[1];
        snprintf(sub, sizeof sub, "%s.phases", dotted);
        if (seq->type != YAML_SEQUENCE_NODE)
            config_fail(&kw[1], sub, k, "expected a list of phases, got %s", node_kind(seq));
        long n = seq->data.sequence.items.top - seq->data.sequence.items.start;
        if (n < 1 || n > SCHEDULE_MAX_PHASES)
            config_fail(&kw[1], sub, k, "expected 1 to %d phases, got %ld", SCHEDULE_MAX_PHASES, n);
        s.n_phases = (int)n;
        for (int i = 0; i < n; i++) {
            yaml_node_t *pn = yaml_document_get_node(doc, seq->data.sequence.items.start[i]);
            CHECK(pn, "libyaml returned a sequence item without a node");
            Where pwhere = where_of(w, pn);
            snprintf(sub, sizeof sub, "%s.phases[%d]", dotted, i);
            if (pn->type != YAML_MAPPING_NODE)
                config_fail(&pwhere, sub, k, "expected a mapping {shape, until_steps | until_tokens, to}, got %s",
                            node_kind(pn));
            static const char *const phase_keys[] = {"shape", "to", "until_steps", "until_tokens", NULL};
            yaml_node_t *pv[4] = {NULL, NULL, NULL, NULL};
            Where pk[4];
            memset(pk, 0, sizeof pk);
            read_mapping(doc, pn, phase_keys, pv, pk, w, sub, k);
            Phase *ph = &s.phases[i];
            char subkey[200], shape_expect[] = "one of constant, linear, cosine";
            if (!pv[0]) config_fail(&pwhere, sub, k, "missing shape (%s)", shape_expect);
            snprintf(subkey, sizeof subkey, "%s.shape", sub);
            const char *shape = scalar_text(pv[0], &pk[0], subkey, k, shape_expect);
            int found = -1;
            for (int j = 0; config_phase_shapes[j]; j++)
                if (strcmp(shape, config_phase_shapes[j]) == 0) found = j;
            if (found < 0) config_fail(&pk[0], subkey, k, "expected %s, got \"%s\"", shape_expect, shape);
            ph->shape = (PhaseShape)found;
            if (!pv[1]) config_fail(&pwhere, sub, k, "missing to (the value at the end of the phase)");
            snprintf(subkey, sizeof subkey, "%s.to", sub);
            ph->to = number_in(scalar_text(pv[1], &pk[1], subkey, k, "a number"), 0, k->min, k->min_open, k->max,
                               k->max_open, &pk[1], subkey, k, NULL);
            if (!pv[2] == !pv[3])
                config_fail(&pwhere, sub, k, "expected exactly one of until_steps and until_tokens, got %s",
                            pv[2] ? "both" : "neither");
            if (pv[2]) {
                snprintf(subkey, sizeof subkey, "%s.until_steps", sub);
                ph->until_steps = number_in(scalar_text(pv[2], &pk[2], subkey, k, "an integer"), 1, 1, 0, 1e15, 0,
                                            &pk[2], subkey, k, NULL);
                pw[i] = pk[2];
            } else {
                snprintf(subkey, sizeof subkey, "%s.until_tokens", sub);
                ph->until_tokens = number_in(scalar_text(pv[3], &pk[3], subkey, k, "a number"), 0, 0, 1, 9e15, 0,
                                             &pk[3], subkey, k, NULL);
                pw[i] = pk[3];
            }
        }
    } else {
        config_fail(w, dotted, k, "expected %s, got %s", expect, node_kind(node));
    }
    memcpy(config_field(cfg, k), &s, sizeof s);
    memcpy(st->phase[ki], pw, sizeof pw);
}

void config_set_node(Config *cfg, LoadState *st, int ki, yaml_document_t *doc, yaml_node_t *node, const Where *w) {
    const ConfigKey *k = &config_keys[ki];
    char dotted[128], expect[256];
    snprintf(dotted, sizeof dotted, "%s.%s", k->section, k->name);
    if (k->type == KEY_SCHEDULE) {
        set_schedule(cfg, st, ki, doc, node, w, dotted);
    } else {
        config_describe(k, expect, sizeof expect, 0);
        set_scalar(cfg, k, scalar_text(node, w, dotted, k, expect), w, dotted);
    }
    st->key[ki] = *w;
}

void config_set_text(Config *cfg, LoadState *st, int ki, const char *text, const Where *w) {
    const ConfigKey *k = &config_keys[ki];
    char dotted[128];
    snprintf(dotted, sizeof dotted, "%s.%s", k->section, k->name);
    if (k->type != KEY_SCHEDULE) {   // scalars take the text as it is (no YAML quoting needed on a command line)
        set_scalar(cfg, k, text, w, dotted);
        st->key[ki] = *w;
        return;
    }
    yaml_parser_t parser;
    yaml_document_t doc;
    YAML_CHECK(yaml_parser_initialize(&parser));
    yaml_parser_set_input_string(&parser, (const unsigned char *)text, strlen(text));
    if (!yaml_parser_load(&parser, &doc)) {
        char at[64] = "at the end of the value";
        if (parser.problem_mark.line == 0 && parser.problem_mark.index < strlen(text))
            snprintf(at, sizeof at, "at column %zu of the value", parser.problem_mark.column + 1);
        config_fail(w, dotted, k, "YAML syntax error %s: %s%s%s%s", at,
                    parser.problem ? parser.problem : "unknown problem", parser.context ? " (" : "",
                    parser.context ? parser.context : "", parser.context ? ")" : "");
    }
    yaml_node_t *root = yaml_document_get_root_node(&doc);
    if (!root) config_fail(w, dotted, k, "expected a number or {start, phases}, got an empty value");
    config_set_node(cfg, st, ki, &doc, root, w);
    yaml_document_delete(&doc);
    yaml_parser_delete(&parser);
}
