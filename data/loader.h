// The data loader: token shards -> packed, shuffled, data-parallel micro-batches of token ids [B, T + 1 + D].
//
// Semantics (full text in data/FORMAT.md, "The loader"):
// - Dataset: every document of every shard matched by the comma-separated glob patterns, shards in sorted path
//   order, documents in file order; global document ids 0..n_docs-1.
// - Epoch e: a permutation of the documents (Fisher-Yates driven by xoshiro256** seeded from splitmix64(seed, e);
//   the identity when shuffle is off). The documents are concatenated in that order, each FOLLOWED by the shards'
//   eos_id, into one token stream of length L = n_tokens + n_docs (the same for every epoch).
// - Stream window j of an epoch is stream[j*T, j*T + T + 1 + D): consecutive windows overlap by 1 + D tokens, so
//   that the inputs (first T tokens) tile the stream and every position has its next-token (and MTP) targets. An
//   epoch has W = floor((L - 1 - D) / T) windows; the tail that does not fill a window is dropped.
// - The windows of an epoch are visited in a seeded order too (loader_window_order, the identity when shuffle is
//   off): without it a long document fills consecutive micro-batches, and a run sees, say, a hundred batches of one
//   ASCII-art table in a row (tiny.yaml's loss jumped from 2.5 to 5.7 at step 205 on exactly that).
// - Global window g (0, 1, 2, ... over the whole run) is window loader_window_order(g / W, g % W) of epoch g / W.
// - Data parallel: each loader_next call consumes the next B * dp_size global windows; rank r gets windows
//   [p + r*B, p + r*B + B) where p is the position before the call. The windows of one optimizer step (a number of
//   micro-batches on every rank) are thus the same set for any dp_size and micro_batch with the same global batch,
//   and the position is the same on every rank.
// - Packing without cross-document masking (RECIPE.md): a window may span documents; EOS marks the boundaries.
#ifndef LOADER_H
#define LOADER_H

#include <stdint.h>

typedef struct {
    const char *shards;     // comma-separated glob patterns; each must match at least one file
    const char *base_dir;   // relative patterns are relative to this directory (NULL or "" = working directory)
    int seq_len;            // T
    int mtp_depth;          // D; each row holds T + 1 + D tokens
    int micro_batch;        // B: rows per loader_next on this rank
    int dp_rank, dp_size;   // 0 <= dp_rank < dp_size
    uint64_t seed;          // shuffle seed (ignored when shuffle == 0)
    int shuffle;            // 1 = new document permutation every epoch; 0 = file order (validation)
    uint32_t vocab_size;    // the model's vocabulary; every shard's vocab_size must be <= it
    int prefetch;           // micro-batches prepared ahead by a background thread (0 = read in loader_next)
} LoaderOptions;

typedef struct Loader Loader;

// The resumable position: a plain struct of fixed-width fields (same on every rank), meant to be stored in a
// checkpoint. It is the position of the NEXT micro-batch loader_next will return, whatever was prefetched.
typedef struct {
    uint64_t magic;           // LOADER_STATE_MAGIC
    uint64_t next_window;     // global window index of the next micro-batch (before the rank offset)
    uint64_t seed;            // shuffle seed, and the dataset's shape, checked on load
    uint64_t n_docs, n_tokens;
    int32_t seq_len, mtp_depth, shuffle;
    int32_t window_order;     // 1: windows visited in the seeded window order; 0: in stream order (states saved
                              // before that rule, which resume in their own order)
} LoaderState;
#define LOADER_STATE_MAGIC 0x31745364616f4cULL   // "LoadSt1"

// Opens and validates every shard (dies with the file name and what was expected on any problem), checks the
// data holds at least one window, and starts the prefetch thread.
Loader *loader_open(const LoaderOptions *o);
// Fills tokens[B * (T + 1 + D)] (row-major, one window per row) with this rank's next micro-batch.
void loader_next(Loader *l, uint32_t *tokens);
void loader_state_save(const Loader *l, LoaderState *st);
// Dies if st was saved for a different dataset, seed, seq_len, mtp_depth or shuffle setting.
void loader_state_load(Loader *l, const LoaderState *st);
// Back to global window 0 (the start of epoch 0): the validation stream restarts here for every evaluation.
void loader_rewind(Loader *l);
void loader_close(Loader *l);

// Facts about the opened dataset (for logs and tests).
typedef struct {
    int n_shards;
    uint64_t n_docs, n_tokens;   // over all shards, tokens without the EOS the loader inserts
    uint64_t stream_len;         // n_tokens + n_docs
    uint64_t windows_per_epoch;  // W
    uint32_t vocab_size, eos_id;
} LoaderInfo;
LoaderInfo loader_info(const Loader *l);
// The global window index the next loader_next will start from (LoaderState.next_window).
uint64_t loader_position(const Loader *l);
// Writes the document order of epoch e (a permutation of 0..n_docs-1) into perm[n_docs]: exposed for tests.
void loader_epoch_order(const Loader *l, uint64_t epoch, uint64_t *perm);
// The stream window visited at position w (< W) of epoch `epoch`: a bijection of [0, W) drawn from (seed, epoch);
// the identity when shuffle is off.
uint64_t loader_window_order(const Loader *l, uint64_t epoch, uint64_t w);
// The permutation behind it: position w of [0, W) for (seed, epoch).
uint64_t loader_window_permute(uint64_t seed, uint64_t epoch, uint64_t W, uint64_t w);

#endif
