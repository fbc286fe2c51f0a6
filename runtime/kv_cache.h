// Paged KV storage of one attn block instance: fixed-size pages of page_size * kv_dim elements
// (f32 or bf16: elem_bytes 4 or 2) for K and then V, in one arena of the backend's memory; a
// sequence's pages are a table of integer page ids (kernels::PageTable), so a table means the
// same to a GPU kernel or another process. Owned by the engine thread (no locks).
#pragma once

#include <cstdint>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "kernels/cpu/attention.h"
#include "runtime/backend.h"
#include "runtime/block.h"

namespace blockserve::runtime {

class KvCache {
 public:
  // max_pages == 0: grow without bound. Memory comes from `backend` (null: the CPU).
  KvCache(int kv_dim, int page_size, int max_pages, int elem_bytes = sizeof(float),
          Backend* backend = nullptr);

  // Makes room for positions [0, len) of `seq`. ResourceExhausted when the pool is full (the
  // sequence keeps what it had). May move the arena (page ids stay): take page tables after.
  absl::Status Reserve(SeqId seq, int len);
  // Positions written so far (the next token goes at this position).
  int Length(SeqId seq) const;
  void SetLength(SeqId seq, int len);

  // The K and V parts of the page holding position `pos` (layout: kernels/cpu/attention.h),
  // device addresses.
  void* KeyPage(SeqId seq, int pos);
  void* ValuePage(SeqId seq, int pos);
  // The sequence's page ids in order, and as a table the attention kernels read.
  const std::vector<int32_t>& PageIds(SeqId seq) const;
  kernels::PageTable Table(SeqId seq) const;

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
    std::vector<int32_t> pages;
    int length = 0;
  };
  const Seq& Get(SeqId seq) const;
  // Makes the arena hold at least one more page than num_pages_: the whole budget at once when
  // there is one, else doubling (the pages in use are copied; their ids stay). False when
  // max_pages_ is reached or memory is out.
  bool Grow();
  uint8_t* base() const { return static_cast<uint8_t*>(arena_.data()); }

  int kv_dim_;
  int page_size_;
  int max_pages_;
  int elem_bytes_;
  Backend* backend_;
  int pages_used_ = 0;
  int num_pages_ = 0;  // page ids handed out so far: [0, num_pages_)
  int capacity_ = 0;   // pages the arena holds
  Buffer arena_;
  std::vector<int32_t> free_;
  absl::flat_hash_map<int32_t, int> shared_;  // holders beyond the first, per shared page
  absl::flat_hash_map<SeqId, Seq> seqs_;
};

}  // namespace blockserve::runtime
