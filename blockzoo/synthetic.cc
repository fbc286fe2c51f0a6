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

runtime::ModelConfig Llama110MConfig() {
  runtime::ModelConfig c;
  c.dim = 768;
  c.hidden_dim = 2048;
  c.n_layers = 12;
  c.n_heads = 12;
  c.n_kv_heads = 12;
  c.vocab_size = 32000;
  c.max_seq_len = 1024;
  c.tied_embeddings = false;
  return c;
}

runtime::ModelConfig SmallConfig() {
  runtime::ModelConfig c = Llama110MConfig();
  c.dim = 256;
  c.hidden_dim = 688;
  c.n_layers = 4;
  c.n_heads = 8;
  c.n_kv_heads = 4;
  c.vocab_size = 512;
  c.max_seq_len = 512;
  return c;
}

runtime::ModelConfig MediumConfig() {
  runtime::ModelConfig c = Llama110MConfig();
  c.dim = 512;
  c.hidden_dim = 1376;
  c.n_layers = 8;
  c.n_heads = 8;
  c.n_kv_heads = 8;
  c.vocab_size = 8000;
  c.max_seq_len = 512;
  return c;
}

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
