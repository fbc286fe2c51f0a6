#include "blockzoo/synthetic.h"

namespace blockserve::blockzoo {
namespace {

using runtime::DType;
using runtime::Tensor;

Tensor RandomTensor(std::vector<int64_t> shape, DType dtype, uint64_t& state, float scale) {
  Tensor t = Tensor::Zeros(dtype, std::move(shape));
  const int64_t n = t.numel();
  for (int64_t i = 0; i < n; ++i) {
    state ^= state << 13;
    state ^= state >> 7;
    state ^= state << 17;
    const float u = (static_cast<float>(state >> 40) / static_cast<float>(1 << 24)) * 2.0f - 1.0f;
    const float v = u * scale;
    if (dtype == DType::kF32) {
      t.mutable_data<float>()[i] = v;
    } else if (dtype == DType::kF16) {
      t.mutable_data<uint16_t>()[i] = runtime::FloatToHalf(v);
    } else {
      t.mutable_data<uint16_t>()[i] = runtime::FloatToBF16(v);
    }
  }
  return t;
}

Tensor Ones(int64_t n) {
  Tensor t = Tensor::Zeros(DType::kF32, {n});
  for (int64_t i = 0; i < n; ++i) t.mutable_data<float>()[i] = 1.0f;
  return t;
}

}  // namespace

// A Llama shape with an untied head.
static runtime::ModelConfig Shape(int dim, int hidden, int layers, int heads, int kv_heads, int vocab,
                           int seq_len) {
  runtime::ModelConfig c;
  c.dim = dim;
  c.hidden_dim = hidden;
  c.n_layers = layers;
  c.n_heads = heads;
  c.n_kv_heads = kv_heads;
  c.vocab_size = vocab;
  c.max_seq_len = seq_len;
  c.tied_embeddings = false;
  return c;
}

runtime::ModelConfig Llama110MConfig() { return Shape(768, 2048, 12, 12, 12, 32000, 1024); }
runtime::ModelConfig SmallConfig() { return Shape(256, 688, 4, 8, 4, 512, 512); }
runtime::ModelConfig MediumConfig() { return Shape(512, 1376, 8, 8, 8, 8000, 512); }

runtime::ModelWeights MakeSyntheticWeights(const runtime::ModelConfig& c, DType dtype,
                                           uint64_t seed) {
  runtime::ModelWeights w;
  w.config = c;
  w.source = "synthetic";
  uint64_t s = seed * 2654435761u + 1;
  const float scale = 0.035f;  // uniform(-a, a) with std a/sqrt(3) ~ 0.02
  const int64_t d = c.dim, kv = c.kv_dim(), h = c.hidden_dim, v = c.vocab_size;
  w.tensors["tok_embeddings"] = RandomTensor({v, d}, dtype, s, scale);
  w.tensors["output"] = RandomTensor({v, d}, dtype, s, scale);
  w.tensors["norm"] = Ones(d);
  for (int l = 0; l < c.n_layers; ++l) {
    auto name = [&](const char* n) { return runtime::LayerTensor(l, n); };
    w.tensors[name("attention_norm")] = Ones(d);
    w.tensors[name("ffn_norm")] = Ones(d);
    w.tensors[name("wq")] = RandomTensor({d, d}, dtype, s, scale);
    w.tensors[name("wk")] = RandomTensor({kv, d}, dtype, s, scale);
    w.tensors[name("wv")] = RandomTensor({kv, d}, dtype, s, scale);
    w.tensors[name("wo")] = RandomTensor({d, d}, dtype, s, scale);
    w.tensors[name("w1")] = RandomTensor({h, d}, dtype, s, scale);
    w.tensors[name("w2")] = RandomTensor({d, h}, dtype, s, scale);
    w.tensors[name("w3")] = RandomTensor({h, d}, dtype, s, scale);
  }
  return w;
}

}  // namespace blockserve::blockzoo
