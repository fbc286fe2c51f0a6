#include "runtime/kv_cache.h"

#include "runtime/check.h"
#include <algorithm>

#include "absl/strings/str_cat.h"
#include "runtime/tensor.h"

namespace blockserve::runtime {

KvCache::KvCache(int kv_dim, int page_size, int max_pages, int elem_bytes)
    : kv_dim_(kv_dim), page_size_(page_size), max_pages_(max_pages), elem_bytes_(elem_bytes) {}

absl::Status KvCache::Reserve(SeqId seq, int len) {
  Seq& s = seqs_[seq];
  const size_t half = page_bytes() / 2;  // the K part, then the V part
  const size_t need = (static_cast<size_t>(len) + page_size_ - 1) / page_size_;
  while (s.k.size() < need) {
    uint8_t* page;
    if (!free_.empty()) {
      page = free_.back();
      free_.pop_back();
    } else {
      if (max_pages_ > 0 && num_pages_ >= max_pages_) {
        return absl::ResourceExhaustedError(
            absl::StrCat("KV cache full: ", pages_used_, " of ", max_pages_, " pages in use"));
      }
      // Pages come from slabs: one allocation and one round of page faults per slab, not per
      // page. A slab is kSlabPages, or 4 MiB when that is most of the way there: AllocateAligned
      // puts 4 MiB and up on huge pages, and decode reading K/V through 4 KiB pages takes a TLB
      // miss per page (bf16 pages are half the size of f32 ones: 64 of them fell short).
      const size_t slab_bytes = kSlabPages * page_bytes();
      const int want = slab_bytes >= (size_t{2} << 20) && slab_bytes < (size_t{4} << 20)
                           ? static_cast<int>(((size_t{4} << 20) + page_bytes() - 1) / page_bytes())
                           : kSlabPages;
      const int slab_pages = max_pages_ > 0 ? std::min(want, max_pages_ - num_pages_) : want;
      slabs_.push_back(AllocateAligned(slab_pages * page_bytes()));
      auto* base = static_cast<uint8_t*>(slabs_.back().get());
      for (int i = slab_pages - 1; i >= 0; --i) free_.push_back(base + i * page_bytes());
      num_pages_ += slab_pages;
      page = free_.back();
      free_.pop_back();
    }
    s.k.push_back(page);
    s.v.push_back(page + half);
    ++pages_used_;
  }
  return absl::OkStatus();
}

const KvCache::Seq& KvCache::Get(SeqId seq) const {
  static const Seq kEmpty;
  auto it = seqs_.find(seq);
  return it == seqs_.end() ? kEmpty : it->second;
}

int KvCache::Length(SeqId seq) const { return Get(seq).length; }

void KvCache::SetLength(SeqId seq, int len) {
  Seq& s = seqs_[seq];
  BS_CHECK(len <= static_cast<int>(s.k.size()) * page_size_);
  s.length = len;
}

void* KvCache::KeyPage(SeqId seq, int pos) {
  return const_cast<void*>(seqs_.at(seq).k[pos / page_size_]);
}

void* KvCache::ValuePage(SeqId seq, int pos) {
  return const_cast<void*>(seqs_.at(seq).v[pos / page_size_]);
}

const std::vector<const void*>& KvCache::KeyPages(SeqId seq) const { return Get(seq).k; }
const std::vector<const void*>& KvCache::ValuePages(SeqId seq) const { return Get(seq).v; }

void KvCache::Release(SeqId seq) {
  auto it = seqs_.find(seq);
  if (it == seqs_.end()) return;
  for (const void* p : it->second.k) {
    auto sh = shared_.find(p);
    if (sh != shared_.end()) {
      if (--sh->second == 0) shared_.erase(sh);
      continue;
    }
    free_.push_back(static_cast<uint8_t*>(const_cast<void*>(p)));
    --pages_used_;
  }
  seqs_.erase(it);
}

absl::Status KvCache::Fork(SeqId src, SeqId dst, int len) {
  const Seq& s = Get(src);
  if (len % page_size_ != 0 || len > s.length) {
    return absl::InvalidArgumentError(absl::StrCat("KV fork of ", len, " positions: sequence ",
                                                   src, " holds ", s.length, " (page size ",
                                                   page_size_, ")"));
  }
  if (seqs_.count(dst) && !seqs_.at(dst).k.empty()) {
    return absl::FailedPreconditionError(absl::StrCat("KV fork into non-empty sequence ", dst));
  }
  Seq copy;
  const int pages = len / page_size_;
  copy.k.assign(s.k.begin(), s.k.begin() + pages);
  copy.v.assign(s.v.begin(), s.v.begin() + pages);
  copy.length = len;
  for (const void* p : copy.k) ++shared_[p];
  seqs_[dst] = std::move(copy);
  return absl::OkStatus();
}

}  // namespace blockserve::runtime
