#include "blockzoo/formats/gguf.h"

#include <cstring>

#include "absl/strings/str_cat.h"
#include "runtime/status_macros.h"

namespace blockserve::blockzoo {
namespace {

constexpr uint64_t kMaxDims = 4;
constexpr uint64_t kMaxStringBytes = 1 << 24;

class Reader {
 public:
  Reader(const uint8_t* data, size_t size, const std::string& source)
      : data_(data), size_(size), source_(source) {}

  absl::Status Error(absl::string_view what) const {
    return absl::InvalidArgumentError(
        absl::StrCat(source_, ": GGUF: ", what, " (at byte ", off_, " of ", size_, ")"));
  }
  template <typename T>
  absl::Status Read(T* out) {
    if (size_ - off_ < sizeof(T)) return Error("unexpected end of file");
    std::memcpy(out, data_ + off_, sizeof(T));
    off_ += sizeof(T);
    return absl::OkStatus();
  }
  absl::Status ReadString(std::string* out) {
    uint64_t len = 0;
    RETURN_IF_ERROR(Read(&len));
    if (len > kMaxStringBytes || len > size_ - off_) {
      return Error(absl::StrCat("string length ", len, " exceeds the file"));
    }
    out->assign(reinterpret_cast<const char*>(data_ + off_), len);
    off_ += len;
    return absl::OkStatus();
  }
  // Rejects counts that could not possibly fit in what is left (each element >= min_bytes).
  absl::Status CheckCount(uint64_t count, uint64_t min_bytes, absl::string_view what) const {
    if (count > (size_ - off_) / min_bytes) {
      return Error(absl::StrCat(what, " count ", count, " exceeds the file"));
    }
    return absl::OkStatus();
  }
  size_t offset() const { return off_; }
  size_t size() const { return size_; }

 private:
  const uint8_t* data_;
  size_t size_;
  size_t off_ = 0;
  const std::string& source_;
};

uint64_t ScalarSize(GgufType t) {
  switch (t) {
    case GgufType::kU8: case GgufType::kI8: case GgufType::kBool: return 1;
    case GgufType::kU16: case GgufType::kI16: return 2;
    case GgufType::kU32: case GgufType::kI32: case GgufType::kF32: return 4;
    case GgufType::kU64: case GgufType::kI64: case GgufType::kF64: return 8;
    default: return 0;
  }
}

// Reads one scalar of type t as integer or float.
absl::Status ReadScalar(Reader& r, GgufType t, int64_t* i, double* f, bool* is_float) {
  *is_float = false;
  switch (t) {
    case GgufType::kU8: { uint8_t v; RETURN_IF_ERROR(r.Read(&v)); *i = v; break; }
    case GgufType::kI8: { int8_t v; RETURN_IF_ERROR(r.Read(&v)); *i = v; break; }
    case GgufType::kBool: { uint8_t v; RETURN_IF_ERROR(r.Read(&v)); *i = v != 0; break; }
    case GgufType::kU16: { uint16_t v; RETURN_IF_ERROR(r.Read(&v)); *i = v; break; }
    case GgufType::kI16: { int16_t v; RETURN_IF_ERROR(r.Read(&v)); *i = v; break; }
    case GgufType::kU32: { uint32_t v; RETURN_IF_ERROR(r.Read(&v)); *i = v; break; }
    case GgufType::kI32: { int32_t v; RETURN_IF_ERROR(r.Read(&v)); *i = v; break; }
    case GgufType::kU64: { uint64_t v; RETURN_IF_ERROR(r.Read(&v)); *i = static_cast<int64_t>(v); break; }
    case GgufType::kI64: { int64_t v; RETURN_IF_ERROR(r.Read(&v)); *i = v; break; }
    case GgufType::kF32: { float v; RETURN_IF_ERROR(r.Read(&v)); *f = v; *is_float = true; break; }
    case GgufType::kF64: { double v; RETURN_IF_ERROR(r.Read(&v)); *f = v; *is_float = true; break; }
    default:
      return r.Error(absl::StrCat("unknown value type ", static_cast<uint32_t>(t)));
  }
  return absl::OkStatus();
}

absl::Status ReadValue(Reader& r, GgufValue* v) {
  uint32_t type = 0;
  RETURN_IF_ERROR(r.Read(&type));
  v->type = static_cast<GgufType>(type);
  if (v->type == GgufType::kString) return r.ReadString(&v->s);
  if (v->type != GgufType::kArray) {
    bool is_float;
    return ReadScalar(r, v->type, &v->i, &v->f, &is_float);
  }
  uint32_t elem = 0;
  uint64_t count = 0;
  RETURN_IF_ERROR(r.Read(&elem));
  RETURN_IF_ERROR(r.Read(&count));
  v->elem_type = static_cast<GgufType>(elem);
  if (v->elem_type == GgufType::kString) {
    RETURN_IF_ERROR(r.CheckCount(count, 8, "string array"));
    v->strings.resize(count);
    for (auto& s : v->strings) RETURN_IF_ERROR(r.ReadString(&s));
    return absl::OkStatus();
  }
  const uint64_t es = ScalarSize(v->elem_type);
  if (es == 0) return r.Error(absl::StrCat("unsupported array element type ", elem));
  RETURN_IF_ERROR(r.CheckCount(count, es, "array"));
  for (uint64_t k = 0; k < count; ++k) {
    int64_t i = 0;
    double f = 0;
    bool is_float;
    RETURN_IF_ERROR(ReadScalar(r, v->elem_type, &i, &f, &is_float));
    if (is_float) {
      v->floats.push_back(f);
    } else {
      v->ints.push_back(i);
    }
  }
  return absl::OkStatus();
}

uint64_t GgmlTypeSize(uint32_t t) {
  switch (t) {
    case 0: return 4;   // F32
    case 1: return 2;   // F16
    case 30: return 2;  // BF16
    default: return 0;
  }
}

absl::Status ReadTensorInfo(Reader& r, GgufTensorInfo* t) {
  RETURN_IF_ERROR(r.ReadString(&t->name));
  uint32_t n_dims = 0;
  RETURN_IF_ERROR(r.Read(&n_dims));
  if (n_dims == 0 || n_dims > kMaxDims) {
    return r.Error(absl::StrCat("tensor '", t->name, "' has ", n_dims, " dimensions"));
  }
  uint64_t elems = 1;
  t->ne.resize(n_dims);
  for (auto& d : t->ne) {
    RETURN_IF_ERROR(r.Read(&d));
    if (d == 0 || d > (uint64_t{1} << 32) || elems > (uint64_t{1} << 40) / d) {
      return r.Error(absl::StrCat("tensor '", t->name, "' has an absurd dimension ", d));
    }
    elems *= d;
  }
  RETURN_IF_ERROR(r.Read(&t->ggml_type));
  RETURN_IF_ERROR(r.Read(&t->offset));
  t->nbytes = elems * GgmlTypeSize(t->ggml_type);
  return absl::OkStatus();
}

}  // namespace

const GgufValue* GgufFile::Find(const std::string& key) const {
  auto it = kv.find(key);
  return it == kv.end() ? nullptr : &it->second;
}

absl::StatusOr<int64_t> GgufFile::GetInt(const std::string& key) const {
  const GgufValue* v = Find(key);
  if (v == nullptr) return absl::NotFoundError(absl::StrCat(source, ": GGUF key '", key, "' missing"));
  if (v->type == GgufType::kString || v->type == GgufType::kArray || v->type == GgufType::kF32 ||
      v->type == GgufType::kF64) {
    return absl::InvalidArgumentError(absl::StrCat(source, ": GGUF key '", key, "' is not an integer"));
  }
  return v->i;
}

absl::StatusOr<double> GgufFile::GetFloat(const std::string& key) const {
  const GgufValue* v = Find(key);
  if (v == nullptr) return absl::NotFoundError(absl::StrCat(source, ": GGUF key '", key, "' missing"));
  if (v->type == GgufType::kF32 || v->type == GgufType::kF64) return v->f;
  if (v->type == GgufType::kString || v->type == GgufType::kArray) {
    return absl::InvalidArgumentError(absl::StrCat(source, ": GGUF key '", key, "' is not a number"));
  }
  return static_cast<double>(v->i);
}

absl::StatusOr<std::string> GgufFile::GetString(const std::string& key) const {
  const GgufValue* v = Find(key);
  if (v == nullptr) return absl::NotFoundError(absl::StrCat(source, ": GGUF key '", key, "' missing"));
  if (v->type != GgufType::kString) {
    return absl::InvalidArgumentError(absl::StrCat(source, ": GGUF key '", key, "' is not a string"));
  }
  return v->s;
}

absl::StatusOr<GgufFile> ParseGguf(const uint8_t* data, size_t size, const std::string& source) {
  Reader r(data, size, source);
  GgufFile f;
  f.source = source;
  uint32_t magic = 0;
  RETURN_IF_ERROR(r.Read(&magic));
  if (std::memcmp(&magic, "GGUF", 4) != 0) return r.Error("not a GGUF file (bad magic)");
  RETURN_IF_ERROR(r.Read(&f.version));
  if (f.version != 2 && f.version != 3) {
    return r.Error(absl::StrCat("unsupported GGUF version ", f.version));
  }
  uint64_t n_tensors = 0, n_kv = 0;
  RETURN_IF_ERROR(r.Read(&n_tensors));
  RETURN_IF_ERROR(r.Read(&n_kv));
  RETURN_IF_ERROR(r.CheckCount(n_kv, 13, "metadata"));
  for (uint64_t k = 0; k < n_kv; ++k) {
    std::string key;
    RETURN_IF_ERROR(r.ReadString(&key));
    GgufValue v;
    RETURN_IF_ERROR(ReadValue(r, &v));
    f.kv[key] = std::move(v);
  }
  RETURN_IF_ERROR(r.CheckCount(n_tensors, 28, "tensor"));
  f.tensors.resize(n_tensors);
  for (auto& t : f.tensors) RETURN_IF_ERROR(ReadTensorInfo(r, &t));
  uint64_t alignment = 32;
  if (const GgufValue* a = f.Find("general.alignment")) {
    if (a->type != GgufType::kU32 || a->i == 0 || (a->i & (a->i - 1)) != 0 || a->i > 65536) {
      return r.Error("general.alignment must be a power-of-two u32");
    }
    alignment = static_cast<uint64_t>(a->i);
  }
  const uint64_t data_start = (r.offset() + alignment - 1) / alignment * alignment;
  for (auto& t : f.tensors) {
    if (t.offset % alignment != 0) {
      return r.Error(absl::StrCat("tensor '", t.name, "' offset ", t.offset, " is not aligned"));
    }
    if (data_start > size || t.offset > size - data_start ||
        t.nbytes > size - data_start - t.offset) {
      return r.Error(absl::StrCat("tensor '", t.name, "' (", t.nbytes, " bytes at offset ",
                                  t.offset, ") lies outside the file"));
    }
    t.offset += data_start;
  }
  return f;
}

namespace {

template <typename T>
void Put(std::string& out, T v) {
  out.append(reinterpret_cast<const char*>(&v), sizeof(v));  // GGUF is little-endian, as are we
}

void PutString(std::string& out, const std::string& s) {
  Put<uint64_t>(out, s.size());
  out += s;
}

void PutScalar(std::string& out, GgufType t, int64_t i, double f) {
  switch (t) {
    case GgufType::kU8: case GgufType::kI8: case GgufType::kBool:
      return Put<uint8_t>(out, static_cast<uint8_t>(i));
    case GgufType::kU16: case GgufType::kI16:
      return Put<uint16_t>(out, static_cast<uint16_t>(i));
    case GgufType::kU32: case GgufType::kI32:
      return Put<uint32_t>(out, static_cast<uint32_t>(i));
    case GgufType::kU64: case GgufType::kI64:
      return Put<uint64_t>(out, static_cast<uint64_t>(i));
    case GgufType::kF32:
      return Put<float>(out, static_cast<float>(f));
    case GgufType::kF64:
      return Put<double>(out, f);
    default:
      return;
  }
}

bool IsFloat(GgufType t) { return t == GgufType::kF32 || t == GgufType::kF64; }

}  // namespace

std::string SerializeGgufMetadata(const std::map<std::string, GgufValue>& kv) {
  std::string out = "GGUF";
  Put<uint32_t>(out, 3);
  Put<uint64_t>(out, 0);
  Put<uint64_t>(out, kv.size());
  for (const auto& [key, v] : kv) {
    PutString(out, key);
    Put<uint32_t>(out, static_cast<uint32_t>(v.type));
    if (v.type == GgufType::kString) {
      PutString(out, v.s);
    } else if (v.type == GgufType::kArray) {
      Put<uint32_t>(out, static_cast<uint32_t>(v.elem_type));
      if (v.elem_type == GgufType::kString) {
        Put<uint64_t>(out, v.strings.size());
        for (const std::string& s : v.strings) PutString(out, s);
      } else if (IsFloat(v.elem_type)) {
        Put<uint64_t>(out, v.floats.size());
        for (double f : v.floats) PutScalar(out, v.elem_type, 0, f);
      } else {
        Put<uint64_t>(out, v.ints.size());
        for (int64_t i : v.ints) PutScalar(out, v.elem_type, i, 0.0);
      }
    } else {
      PutScalar(out, v.type, v.i, v.f);
    }
  }
  out.append((32 - out.size() % 32) % 32, '\0');
  return out;
}

}  // namespace blockserve::blockzoo
