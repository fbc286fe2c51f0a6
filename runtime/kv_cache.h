// Paged KV storage of one attn block instance: fixed-size pages of page_size * kv_dim elements
// (f32 or bf16: elem_bytes 4 or 2) for K and for V, a page list per sequence. Owned by the
// engine thread (no locks).
#pragma once

#include <memory>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "runtime/block.h"

namespace blockserve::runtime {

class KvCache {
 public:
  // max_pages == 0: grow without bound.
  KvCache(int kv_dim, int page_size, int max_pages, int elem_bytes = sizeof(float));

  // Makes room for positions [0, len) of `seq`. ResourceExhausted when the pool is full (the
  // sequence keeps what it had).
  absl::Status Reserve(SeqId seq, int len);
  // Positions written so far (the next token goes at this position).
  int Length(SeqId seq) const;
  void SetLength(SeqId seq, int len);

  // The K and V pages holding position `pos` (layout: kernels/cpu/attention.h).
  void* KeyPage(SeqId seq, int pos);
  void* ValuePage(SeqId seq, int pos);
  const std::vector<const void*>& KeyPages(SeqId seq) const;
  const std::vector<const void*>& ValuePages(SeqId seq) const;

  // Frees `seq`'s pages (a page shared with other sequences stays until its last holder lets go).
  void Release(SeqId seq);
  // Makes `dst` (which must hold nothing) start with the first `len` positions of `src`, `len` a
  // multiple of the page size: the full pages are shared, not copied (they are never written
  // again: writes go to positions past a sequence's length, in pages of its own).
  absl::Status Fork(SeqId src, SeqId dst, int len);
  int page_size() const { return page_size_; }
  // Bytes of one page (K and V together).
  size_t page_bytes() const { return size_t{2} * page_size_ * kv_dim_ * elem_bytes_; }
  int pages_used() const { return pages_used_; }
  int pages_allocated() const { return num_pages_; }
  size_t num_sequences() const { return seqs_.size(); }

 private:
  struct Seq {
    std::vector<const void*> k;
    std::vector<const void*> v;
    int length = 0;
  };
  const Seq& Get(SeqId seq) const;

  int kv_dim_;
  int page_size_;
  int max_pages_;
  int elem_bytes_;
  int pages_used_ = 0;
  static constexpr int kSlabPages = 64;
  int num_pages_ = 0;                         // pages carved from slabs so far
  std::vector<std::shared_ptr<void>> slabs_;  // each page holds K then V
  std::vector<uint8_t*> free_;
  absl::flat_hash_map<const void*, int> shared_;  // holders beyond the first, per shared page
  absl::flat_hash_map<SeqId, Seq> seqs_;
};

}  // namespace blockserve::runtime
