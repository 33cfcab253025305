// Internals shared by the config_*.c files (and the config tests): the key table and the load-time bookkeeping
// that lets every error name where a value came from.
//
// The key table (config_table.c) declares every key exactly once. Parsing (config.c, config_parse.c), validation,
// defaults, config_dump, config_print_help and config_model_hash all walk it, in table order.
#ifndef CONFIG_INTERNAL_H
#define CONFIG_INTERNAL_H

#include "train/config.h"
#include <stddef.h>
#include <yaml.h>

// libyaml functions return 1 on success and 0 on failure.
#define YAML_CHECK(call) do { if (!(call)) die_at(__FILE__, __LINE__, "%s failed (libyaml)", #call); } while (0)

typedef enum {
    KEY_INT,      // int
    KEY_LONG,     // long
    KEY_U64,      // unsigned long long (the seed)
    KEY_DOUBLE,   // double
    KEY_BOOL,     // int, 0 or 1; YAML true / false
    KEY_STRING,   // char[size]
    KEY_ENUM,     // a C enum (int-sized); YAML one of `values`, whose index is the enum value
    KEY_SCHEDULE, // Schedule; YAML a number (constant) or {start, phases}
} KeyType;

typedef struct {
    const char *section, *name;
    KeyType type;
    size_t offset, size;         // of the field in Config
    const char *def;             // default, as YAML text parsed by the same code as a file value
    double min, max;             // numbers (and a schedule's start and every `to`): allowed range
    int min_open, max_open;      // 1: that bound is exclusive
    const char *const *values;   // KEY_ENUM: allowed strings, NULL-terminated
    const char *help;            // one line
} ConfigKey;

extern const ConfigKey config_keys[];
extern const int config_n_keys;
extern const char *const config_sections[];   // NULL-terminated, in table order
extern const char *const config_phase_shapes[]; // indexed by PhaseShape, NULL-terminated

#define CONFIG_MAX_KEYS 128

// Where a value came from: a file position, a --set argument, or the table default.
typedef struct {
    const char *file;       // config file, or NULL
    const char *override;   // the --set argument ("model.dim=64"), or NULL
    int line, col;          // 1-based position in `file` (0 = unknown)
    int seq;                // order of application: 0 default, 1 file, 2... the overrides in order
} Where;

typedef struct {
    Where key[CONFIG_MAX_KEYS];                          // per table key: where its value was set
    Where phase[CONFIG_MAX_KEYS][SCHEDULE_MAX_PHASES];   // schedules: where each phase's end was given
} LoadState;

// Table lookups: index of section.name, or -1.
int config_key_find(const char *section, const char *name);
int config_section_find(const char *section);
// The field of key k inside cfg.
static inline void *config_field(Config *cfg, const ConfigKey *k) { return (char *)cfg + k->offset; }
static inline const void *config_field_c(const Config *cfg, const ConfigKey *k) {
    return (const char *)cfg + k->offset;
}

// "file:12:5", "--set model.dim=abc", "file" or "defaults".
void config_where_str(const Where *w, char *buf, size_t n);
// Prints "<where>: <dotted>: <message>" (plus the key's help line when k is given) and exits with status 1.
__attribute__((noreturn, format(printf, 4, 5)))
void config_fail(const Where *w, const char *dotted, const ConfigKey *k, const char *fmt, ...);
// The nearest name among `names` (n of them, or NULL-terminated when n < 0) to `s`, if close enough; else NULL.
const char *config_nearest(const char *s, const char *const *names, int n);

// Sets key k from one YAML node (a scalar, or a schedule's mapping); w is the key's position.
void config_set_node(Config *cfg, LoadState *st, int k, yaml_document_t *doc, yaml_node_t *node, const Where *w);
// Sets key k from text: a scalar's text, or for schedules YAML (flow) text such as "{start: 0, phases: [...]}".
// Used for the table defaults and for --set values.
void config_set_text(Config *cfg, LoadState *st, int k, const char *text, const Where *w);
// "int", "schedule", ...
const char *config_type_name(KeyType t);
// What key k expects, e.g. "an integer >= 1", "one of sigmoid, softmax" (full: also upper bounds at type limits).
void config_describe(const ConfigKey *k, char *buf, size_t n, int full);
// Formats a double so that strtod gives back the same bits, as short as possible ("0.00022", "1e-06", "4096").
void config_format_double(double v, char *buf, size_t n);
// Resolves every schedule's until_steps to until_tokens and checks that phase ends increase (config_schedule.c).
void config_resolve_schedules(Config *cfg, const LoadState *st);
// FNV-1a 64, continuing from h (start with CONFIG_FNV_OFFSET).
#define CONFIG_FNV_OFFSET 0xcbf29ce484222325ULL
unsigned long long config_fnv1a(unsigned long long h, const void *data, size_t n);

#endif
