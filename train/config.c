// config_load: table defaults, then the YAML file (libyaml document API), then the --set overrides in order, then
// the rules that tie keys together, then schedule resolution (config_schedule.c).
//
// Every value remembers where it was set (LoadState), so that an error about a combination of keys points at one of
// the keys involved: the most recent --set among them, else the first of them written in the file.
#include "train/config_internal.h"
#include "train/check.h"
#include <errno.h>
#include <stdarg.h>
#include <string.h>

// The table is data: check once that it is self-consistent (a broken entry is a programming error).
static void table_check(void) {
    CHECK(config_n_keys <= CONFIG_MAX_KEYS, "config table: %d keys, CONFIG_MAX_KEYS is %d", config_n_keys,
          CONFIG_MAX_KEYS);
    for (int i = 0; i < config_n_keys; i++) {
        const ConfigKey *k = &config_keys[i];
        size_t want = k->type == KEY_INT || k->type == KEY_BOOL || k->type == KEY_ENUM ? sizeof(int)
                    : k->type == KEY_LONG ? sizeof(long) : k->type == KEY_U64 ? sizeof(unsigned long long)
                    : k->type == KEY_DOUBLE ? sizeof(double) : k->type == KEY_SCHEDULE ? sizeof(Schedule) : k->size;
        CHECK(k->size == want, "config table: %s.%s has size %zu, its type needs %zu", k->section, k->name,
              k->size, want);
        CHECK(config_section_find(k->section) >= 0, "config table: %s.%s: unknown section", k->section, k->name);
        CHECK(k->type != KEY_ENUM || k->values, "config table: %s.%s: enum without values", k->section, k->name);
        CHECK(config_key_find(k->section, k->name) == i, "config table: %s.%s declared twice", k->section, k->name);
    }
}

static void apply_defaults(Config *cfg, LoadState *st) {
    table_check();
    memset(cfg, 0, sizeof *cfg);   // padding too: round-trip tests compare whole structs
    memset(st, 0, sizeof *st);
    Where w = {0};
    for (int i = 0; i < config_n_keys; i++) config_set_text(cfg, st, i, config_keys[i].def, &w);
}

void config_defaults(Config *cfg) {
    LoadState *st = xcalloc(1, sizeof *st);
    apply_defaults(cfg, st);
    config_resolve_schedules(cfg, st);
    free(st);
}


// "unknown key" with the nearest name in the section, or the section the name belongs to.
__attribute__((noreturn)) static void unknown_key(const Where *w, const char *section, const char *name) {
    const char *names[CONFIG_MAX_KEYS];
    int n = 0;
    for (int i = 0; i < config_n_keys; i++)
        if (strcmp(config_keys[i].section, section) == 0) names[n++] = config_keys[i].name;
    char dotted[256];
    snprintf(dotted, sizeof dotted, "%s.%s", section, name);
    for (int i = 0; i < config_n_keys; i++)
        if (strcmp(config_keys[i].name, name) == 0)
            config_fail(w, dotted, NULL, "unknown key in section %s (%s is a key of section %s)", section, name,
                        config_keys[i].section);
    const char *near = config_nearest(name, names, n);
    if (near) config_fail(w, dotted, NULL, "unknown key (did you mean %s.%s?)", section, near);
    config_fail(w, dotted, NULL, "unknown key (build/train --help-config lists every key)");
}

__attribute__((noreturn)) static void unknown_section(const Where *w, const char *section) {
    const char *near = config_nearest(section, config_sections, -1);
    for (int i = 0; i < config_n_keys; i++)
        if (strcmp(config_keys[i].name, section) == 0)
            config_fail(w, section, NULL, "unknown section (%s is a key of section %s: write it inside that section)",
                        section, config_keys[i].section);
    config_fail(w, section, NULL,
                "unknown section%s%s%s; expected one of model, train, data, parallel, checkpoint, log",
                near ? " (did you mean " : "", near ? near : "", near ? "?)" : "");
}

__attribute__((noreturn)) static void syntax_error(const char *path, const yaml_parser_t *p) {
    if (p->error == YAML_READER_ERROR) {   // bad encoding: libyaml gives a byte offset, not a line and column
        size_t line = 1, col = 1;
        FILE *f = fopen(path, "rb");
        for (size_t i = 0; f && i < p->problem_offset; i++) {
            int ch = fgetc(f);
            if (ch == EOF) break;
            if (ch == '\n') { line++; col = 1; } else col++;
        }
        if (f) fclose(f);
        die("%s:%zu:%zu: YAML error: %s (byte 0x%02x at offset %zu; expected UTF-8 text)", path, line, col,
            p->problem ? p->problem : "unreadable input", (unsigned)p->problem_value & 0xff, p->problem_offset);
    }
    char context[256] = "";
    if (p->context)
        snprintf(context, sizeof context, " (%s at line %zu, column %zu)", p->context, p->context_mark.line + 1,
                 p->context_mark.column + 1);
    die("%s:%zu:%zu: YAML syntax error: %s%s", path, p->problem_mark.line + 1, p->problem_mark.column + 1,
        p->problem ? p->problem : "unknown problem", context);
}

static Where node_where(const char *path, const yaml_node_t *n) {
    Where w = {.file = path, .line = (int)n->start_mark.line + 1, .col = (int)n->start_mark.column + 1, .seq = 1};
    return w;
}

static const char *key_text(const yaml_node_t *n, const Where *w, const char *what) {
    if (n->type != YAML_SCALAR_NODE) config_fail(w, what, NULL, "expected a plain name, got a mapping or sequence");
    return (const char *)n->data.scalar.value;
}

static void load_section(Config *cfg, LoadState *st, const char *path, yaml_document_t *doc, const char *section,
                         yaml_node_t *map, const Where *sw) {
    if (map->type == YAML_SCALAR_NODE && map->data.scalar.length == 0 &&
        map->data.scalar.style == YAML_PLAIN_SCALAR_STYLE) return;   // "model:" with nothing under it
    if (map->type != YAML_MAPPING_NODE)
        config_fail(sw, section, NULL, "expected a mapping of %s keys, got a %s", section,
                    map->type == YAML_SCALAR_NODE ? "scalar" : "sequence");
    int seen_line[CONFIG_MAX_KEYS] = {0};
    for (yaml_node_pair_t *p = map->data.mapping.pairs.start; p < map->data.mapping.pairs.top; p++) {
        yaml_node_t *kn = yaml_document_get_node(doc, p->key), *vn = yaml_document_get_node(doc, p->value);
        CHECK(kn && vn, "libyaml returned a mapping pair without nodes");
        Where kw = node_where(path, kn);
        const char *name = key_text(kn, &kw, section);
        int ki = config_key_find(section, name);
        if (ki < 0) unknown_key(&kw, section, name);
        if (seen_line[ki]) {
            char dotted[256];
            snprintf(dotted, sizeof dotted, "%s.%s", section, name);
            config_fail(&kw, dotted, NULL, "duplicate key (first given at line %d)", seen_line[ki]);
        }
        seen_line[ki] = kw.line;
        config_set_node(cfg, st, ki, doc, vn, &kw);
    }
}

// One YAML document from a parser whose input is set; `path` names it in messages (a file, or the text's origin).
static void load_parser(Config *cfg, LoadState *st, const char *path, yaml_parser_t *pp) {
    yaml_parser_t parser = *pp;
    yaml_document_t doc;
    if (!yaml_parser_load(&parser, &doc)) syntax_error(path, &parser);
    yaml_node_t *root = yaml_document_get_root_node(&doc);
    if (root) {   // NULL: an empty file, which means all defaults
        Where rw = node_where(path, root);
        if (root->type != YAML_MAPPING_NODE)
            config_fail(&rw, "(top level)", NULL, "expected a mapping of sections (model, train, data, parallel, "
                        "checkpoint, log)");
        int seen_line[16] = {0};
        for (yaml_node_pair_t *p = root->data.mapping.pairs.start; p < root->data.mapping.pairs.top; p++) {
            yaml_node_t *kn = yaml_document_get_node(&doc, p->key), *vn = yaml_document_get_node(&doc, p->value);
            CHECK(kn && vn, "libyaml returned a mapping pair without nodes");
            Where kw = node_where(path, kn);
            const char *section = key_text(kn, &kw, "(top level)");
            int si = config_section_find(section);
            if (si < 0) unknown_section(&kw, section);
            if (seen_line[si])
                config_fail(&kw, section, NULL, "duplicate section (first given at line %d)", seen_line[si]);
            seen_line[si] = kw.line;
            load_section(cfg, st, path, &doc, section, vn, &kw);
        }
        yaml_document_t doc2;   // a second document ("---") would be silently ignored: refuse it
        if (!yaml_parser_load(&parser, &doc2)) syntax_error(path, &parser);
        yaml_node_t *root2 = yaml_document_get_root_node(&doc2);
        if (root2) die("%s:%zu:%zu: a second YAML document; expected one document", path,
                       root2->start_mark.line + 1, root2->start_mark.column + 1);
        yaml_document_delete(&doc2);
    }
    yaml_document_delete(&doc);
    yaml_parser_delete(&parser);
}

static void load_file(Config *cfg, LoadState *st, const char *path) {
    FILE *f = fopen(path, "rb");
    if (!f) die("%s: cannot open the config file: %s", path, strerror(errno));
    yaml_parser_t parser;
    YAML_CHECK(yaml_parser_initialize(&parser));
    yaml_parser_set_input_file(&parser, f);
    load_parser(cfg, st, path, &parser);
    if (fclose(f) != 0) die("%s: cannot close the config file: %s", path, strerror(errno));
}

static void load_text(Config *cfg, LoadState *st, const char *name, const char *text) {
    yaml_parser_t parser;
    YAML_CHECK(yaml_parser_initialize(&parser));
    yaml_parser_set_input_string(&parser, (const unsigned char *)text, strlen(text));
    load_parser(cfg, st, name, &parser);
}

static void apply_override(Config *cfg, LoadState *st, const char *arg, int seq) {
    Where w = {.override = arg, .seq = seq};
    const char *eq = strchr(arg, '=');
    const char *dot = strchr(arg, '.');
    if (!eq || !dot || dot > eq || dot == arg || dot + 1 == eq)
        die("--set %s: expected section.key=value (e.g. --set train.seq_len=2048)", arg);
    char section[64], name[128];
    if ((size_t)(dot - arg) >= sizeof section || (size_t)(eq - dot - 1) >= sizeof name)
        die("--set %s: expected section.key=value; the key is too long", arg);
    memcpy(section, arg, (size_t)(dot - arg));
    section[dot - arg] = 0;
    memcpy(name, dot + 1, (size_t)(eq - dot - 1));
    name[eq - dot - 1] = 0;
    if (config_section_find(section) < 0) unknown_section(&w, section);
    int ki = config_key_find(section, name);
    if (ki < 0) unknown_key(&w, section, name);
    config_set_text(cfg, st, ki, eq + 1, &w);
}

// A broken rule between keys, reported at one of `keys` (space-separated dotted names, preferred first): the most
// recent --set among them, else the first one set in the file, else the first.
__attribute__((noreturn, format(printf, 3, 4)))
static void rule_fail(const LoadState *st, const char *keys, const char *fmt, ...) {
    char list[512], msg[1024];
    snprintf(list, sizeof list, "%s", keys);
    int chosen = -1, first = -1, in_file = -1;
    for (char *save = NULL, *tok = strtok_r(list, " ", &save); tok; tok = strtok_r(NULL, " ", &save)) {
        char *dot = strchr(tok, '.');
        CHECK(dot, "rule_fail: bad key %s", tok);
        *dot = 0;
        int ki = config_key_find(tok, dot + 1);
        CHECK(ki >= 0, "rule_fail: unknown key %s.%s", tok, dot + 1);
        if (first < 0) first = ki;
        if (st->key[ki].override && (chosen < 0 || st->key[ki].seq > st->key[chosen].seq)) chosen = ki;
        if (in_file < 0 && st->key[ki].file) in_file = ki;
    }
    if (chosen < 0) chosen = in_file >= 0 ? in_file : first;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    char dotted[256];
    snprintf(dotted, sizeof dotted, "%s.%s", config_keys[chosen].section, config_keys[chosen].name);
    config_fail(&st->key[chosen], dotted, NULL, "%s", msg);
}

// The rules that tie keys together. Each names the keys involved and what was expected.
static void check_rules(const Config *c, const LoadState *st) {
    const ModelConfig *m = &c->model;
    const TrainConfig *t = &c->train;
    const ParallelConfig *p = &c->parallel;
    if (m->n_routed_experts % m->n_expert_groups)
        rule_fail(st, "model.n_expert_groups model.n_routed_experts", "%d routed experts are not divisible by %d "
                  "groups (expected a divisor of n_routed_experts)", m->n_routed_experts, m->n_expert_groups);
    int per_group = m->n_routed_experts / m->n_expert_groups;
    if (m->n_limited_groups > m->n_expert_groups)
        rule_fail(st, "model.n_limited_groups model.n_expert_groups", "%d groups kept per token out of %d groups "
                  "(expected n_limited_groups <= n_expert_groups)", m->n_limited_groups, m->n_expert_groups);
    if (m->n_activated_experts > m->n_limited_groups * per_group)
        rule_fail(st, "model.n_activated_experts model.n_limited_groups model.n_expert_groups model.n_routed_experts",
                  "top-%d routing, but %d kept groups of %d experts offer only %d (expected n_activated_experts <= "
                  "n_limited_groups * n_routed_experts / n_expert_groups)", m->n_activated_experts,
                  m->n_limited_groups, per_group, m->n_limited_groups * per_group);
    if (m->group_score_topk > per_group)
        rule_fail(st, "model.group_score_topk model.n_expert_groups model.n_routed_experts", "group scores sum the "
                  "top %d experts of groups of %d (expected group_score_topk <= n_routed_experts / n_expert_groups)",
                  m->group_score_topk, per_group);
    if (m->n_dense_layers > m->n_layers)
        rule_fail(st, "model.n_dense_layers model.n_layers", "%d dense layers in a %d-layer model (expected "
                  "n_dense_layers <= n_layers)", m->n_dense_layers, m->n_layers);
    if (m->qk_rope_head_dim % 2)
        rule_fail(st, "model.qk_rope_head_dim", "%d is odd (expected an even number: RoPE rotates pairs of dims)",
                  m->qk_rope_head_dim);
    if (m->rope_scaling == ROPE_YARN && m->rope_factor <= 1)
        rule_fail(st, "model.rope_factor model.rope_scaling", "yarn with factor %g (expected rope_factor > 1 when "
                  "rope_scaling is yarn)", m->rope_factor);
    // Stages need not hold equal numbers of layers (V3: 61 layers on 16 stages); each needs at least one.
    if (p->pp > m->n_layers)
        rule_fail(st, "parallel.pp model.n_layers", "%d pipeline stages for %d layers (expected pp <= n_layers: "
                  "every stage holds at least one block)", p->pp, m->n_layers);
    if (p->dp % p->ep)
        rule_fail(st, "parallel.ep parallel.dp", "ep %d does not divide dp %d (expected a divisor of dp: "
                  "dp = ep * expert data-parallel degree)", p->ep, p->dp);
    if (m->n_routed_experts % p->ep)
        rule_fail(st, "parallel.ep model.n_routed_experts", "ep %d does not divide %d routed experts (expected a "
                  "divisor of n_routed_experts)", p->ep, m->n_routed_experts);
    if (p->schedule == PIPE_DUALPIPE && p->pp % 2)
        rule_fail(st, "parallel.schedule parallel.pp", "dualpipe with pp %d (expected an even pp: rank r holds "
                  "stages r and pp-1-r)", p->pp);
    long unit = (long)t->micro_batch * p->dp;
    if (t->batch_start % unit)
        rule_fail(st, "train.batch_start train.micro_batch parallel.dp", "batch_start %ld is not a multiple of "
                  "micro_batch * dp = %d * %d (expected a multiple of %ld sequences)", t->batch_start,
                  t->micro_batch, p->dp, unit);
    if (t->batch_end % unit)
        rule_fail(st, "train.batch_end train.micro_batch parallel.dp", "batch_end %ld is not a multiple of "
                  "micro_batch * dp = %d * %d (expected a multiple of %ld sequences)", t->batch_end,
                  t->micro_batch, p->dp, unit);
    if (t->batch_end < t->batch_start)
        rule_fail(st, "train.batch_end train.batch_start", "batch_end %ld is below batch_start %ld (expected "
                  "batch_end >= batch_start)", t->batch_end, t->batch_start);
    if (t->total_tokens == 0 && t->max_steps == 0)
        rule_fail(st, "train.total_tokens train.max_steps", "total_tokens and max_steps are both 0 (expected at "
                  "least one limit > 0, or the run never ends)");
}

static void config_load_any(Config *cfg, const char *path, const char *text, int n_overrides, char **overrides) {
    LoadState *st = xcalloc(1, sizeof *st);
    apply_defaults(cfg, st);
    if (path) {
        if (strlen(path) >= sizeof cfg->source_path)
            die("%s: the config path is longer than %zu characters", path, sizeof cfg->source_path - 1);
        memcpy(cfg->source_path, path, strlen(path));
        if (text) load_text(cfg, st, path, text);
        else load_file(cfg, st, path);
    }
    for (int i = 0; i < n_overrides; i++) apply_override(cfg, st, overrides[i], 2 + i);
    check_rules(cfg, st);
    config_resolve_schedules(cfg, st);
    free(st);
}

void config_load(Config *cfg, const char *path, int n_overrides, char **overrides) {
    config_load_any(cfg, path, NULL, n_overrides, overrides);
}

void config_load_text(Config *cfg, const char *name, const char *text, int n_overrides, char **overrides) {
    CHECK(name && text, "config_load_text: a name and a text are required");
    config_load_any(cfg, name, text, n_overrides, overrides);
}
