// Hugging Face interoperability: export to and import from the DeepSeek-V3 layout on the Hub
// (config.json + model*.safetensors [+ model.safetensors.index.json]), written and read in C.
//
// Names and shapes are the parameter table's (model/params.h: the HF names, PyTorch [out, in] order). The export
// adds what the official weights carry beyond our table:
//   model.layers.<i>.mlp.gate.e_score_correction_bias   F32 [E], the selection bias of every MoE layer (always F32:
//                                                        its +-gamma steps are below BF16 resolution)
//   model.layers.<L>.embed_tokens.weight                copies of the shared embedding and output head in every MTP
//   model.layers.<L>.shared_head.head.weight            module L = n_layers + k, as the official checkpoint stores them
// and config.json in the official format (model_type deepseek_v3, DeepseekV3ForCausalLM, rope_scaling for YaRN,
// num_nextn_predict_layers = mtp_depth), which transformers (>= 4.48, and 5.x) and the official inference code read.
//
// safetensors: 8-byte little-endian header length N, then N bytes of JSON {"__metadata__": {...}, name: {"dtype",
// "shape", "data_offsets": [begin, end)}} (offsets relative to the byte after the header, padded with spaces to a
// multiple of 8), then the raw little-endian tensors back to back, sorted so that 4-byte types come first (aligned).
//
// Streaming: both directions move one tensor at a time, in row blocks of at most 16 MiB through one host buffer.
// Export never holds a second copy of the model; import reads only the tensors of the given table (a pipeline stage
// or an expert slice: each rank imports what it owns) with pread at their offsets, never a whole shard file.
//
// Import dtypes: F32, BF16, and F8_E4M3 with the official block scales: for weight "X.weight" of shape [R, C] the
// tensor "X.weight_scale_inv" (F32 or BF16) has shape [ceil(R/128), ceil(C/128)] and the value is
// fp8(X[r, c]) * scale_inv[r / 128, c / 128] (blocks at the right and bottom edges are partial; DeepSeek-V3's
// README_WEIGHTS.md). Anything else (a missing tensor, another shape, another dtype) is an error naming the file and
// the tensor.
#ifndef HF_IO_H
#define HF_IO_H

#include <stdint.h>
#include "kernels/ops.h"
#include "model/params.h"
#include "train/config.h"

typedef enum { HF_F32 = 0, HF_BF16 = 1 } HfDtype;

typedef struct {
    HfDtype dtype;              // weights: F32 (exact) or BF16 (round-to-nearest-even)
    int64_t max_shard_bytes;    // a shard is closed before it would exceed this (a larger tensor gets its own);
                                // 0 = 5 GB (5e9, as transformers' save_pretrained)
} HfExportOptions;

// Where the exported tensors come from, row block by row block (host FP32).
typedef struct {
    // rows [row0, row0 + nrows) of table tensor p (1-D tensors: elements) into dst
    void (*read_rows)(void *ctx, const ParamInfo *p, int64_t row0, int64_t nrows, float *dst);
    // the [E] selection bias of MoE layer `layer` into dst
    void (*read_bias)(void *ctx, int layer, float *dst);
    void *ctx;
} HfSource;

// Writes out_dir (which must not exist; built as <out_dir>.tmp and renamed when complete). table must hold the whole
// model (params_full_stage).
void hf_export(const ModelConfig *mc, const ParamTable *table, const HfSource *src, const char *out_dir,
               const HfExportOptions *o);
// The model in memory: params in backend memory at the table's offsets, bias[i] host [E] per MoE layer in table order.
void hf_export_memory(const ModelConfig *mc, const ParamTable *table, const Backend *be, const float *params,
                      float *const *bias, const char *out_dir, const HfExportOptions *o);
// A checkpoint directory (ckpt.h), any pipeline / expert layout: the model section comes from its manifest.
void hf_export_ckpt(const char *ckpt_dir, const char *out_dir, const HfExportOptions *o);
// config.json text for mc (malloc'd).
char *hf_config_json(const ModelConfig *mc, HfDtype dtype);

// An opened Hugging Face directory (config.json, the index or model.safetensors; shard headers parsed on demand).
typedef struct HfDir HfDir;
HfDir *hf_open(const char *dir);
void hf_close(HfDir *h);
// Dies listing every config.json field that disagrees with mc (file value and config value).
void hf_check_config(const HfDir *h, const ModelConfig *mc);
// 1 if the directory has tensor `name`.
int hf_has(HfDir *h, const char *name);
// Reads rows [row0, row0 + nrows) of tensor `name`, which must have shape [rows, cols] (cols 0: 1-D [rows]),
// converted to FP32 into dst (nrows * max(cols, 1) floats).
void hf_read_rows(HfDir *h, const char *name, int64_t rows, int64_t cols, int64_t row0, int64_t nrows, float *dst);

// --init-from: checks config.json against mc, then fills every tensor of table (params in backend memory) and the
// selection biases (bias[i] host [E], MoE layers in table order; n_bias must match the table). Dies naming the file
// and tensor on any problem.
void hf_import(const char *dir, const ModelConfig *mc, const ParamTable *table, const Backend *be, float *params,
               float **bias, int n_bias);

#endif
