#include "runtime/kv_cache.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "runtime/check.h"

namespace blockserve::runtime {

KvCache::KvCache(int kv_dim, int page_size, int max_pages, int elem_bytes, Backend* backend)
    : kv_dim_(kv_dim), page_size_(page_size), max_pages_(max_pages), elem_bytes_(elem_bytes),
      backend_(backend != nullptr ? backend : &DefaultCpuBackend()) {}

bool KvCache::Grow() {
  if (max_pages_ > 0 && capacity_ >= max_pages_) return false;
  // Under a budget the arena is the whole budget at once: never copied, and on the CPU only
  // address space until pages are first written (the kernel commits memory on first touch).
  // Without one, the first arena is 64 pages, or 4 MiB when that is most of the way there (the
  // CPU puts 4 MiB and up on huge pages: decode reading K/V through 4 KiB pages takes a TLB miss
  // per page); then it doubles, so the pages copied on growth cost O(1) per page overall.
  constexpr int kFirstPages = 64;
  const size_t first_bytes = kFirstPages * page_bytes();
  int want = first_bytes >= (size_t{2} << 20) && first_bytes < (size_t{4} << 20)
                 ? static_cast<int>(((size_t{4} << 20) + page_bytes() - 1) / page_bytes())
                 : kFirstPages;
  want = max_pages_ > 0 ? max_pages_ : std::max(want, 2 * capacity_);
  auto arena = backend_->Allocate(static_cast<size_t>(want) * page_bytes());
  if (!arena.ok()) return false;
  if (num_pages_ > 0) {
    backend_->CopyOnDevice(arena->data(), arena_.data(), static_cast<size_t>(num_pages_) * page_bytes());
  }
  arena_ = std::move(*arena);
  capacity_ = want;
  return true;
}

absl::Status KvCache::Reserve(SeqId seq, int len) {
  Seq& s = seqs_[seq];
  const size_t need = (static_cast<size_t>(len) + page_size_ - 1) / page_size_;
  while (s.pages.size() < need) {
    int32_t page;
    if (!free_.empty()) {
      page = free_.back();
      free_.pop_back();
    } else {
      if (num_pages_ == capacity_ && !Grow()) {
        return absl::ResourceExhaustedError(absl::StrCat(
            "KV cache full: ", pages_used_, " of ",
            max_pages_ > 0 ? max_pages_ : capacity_, " pages in use"));
      }
      page = num_pages_++;
    }
    s.pages.push_back(page);
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
  BS_CHECK(len <= static_cast<int>(s.pages.size()) * page_size_);
  s.length = len;
}

void* KvCache::KeyPage(SeqId seq, int pos) {
  return base() + static_cast<size_t>(seqs_.at(seq).pages[pos / page_size_]) * page_bytes();
}

void* KvCache::ValuePage(SeqId seq, int pos) {
  return static_cast<uint8_t*>(KeyPage(seq, pos)) + page_bytes() / 2;
}

const std::vector<int32_t>& KvCache::PageIds(SeqId seq) const { return Get(seq).pages; }

kernels::PageTable KvCache::Table(SeqId seq) const {
  return {base(), page_bytes(), page_bytes() / 2, Get(seq).pages.data()};
}

void KvCache::Release(SeqId seq) {
  auto it = seqs_.find(seq);
  if (it == seqs_.end()) return;
  for (int32_t p : it->second.pages) {
    auto sh = shared_.find(p);
    if (sh != shared_.end()) {
      if (--sh->second == 0) shared_.erase(sh);
      continue;
    }
    free_.push_back(p);
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
  if (seqs_.count(dst) && !seqs_.at(dst).pages.empty()) {
    return absl::FailedPreconditionError(absl::StrCat("KV fork into non-empty sequence ", dst));
  }
  Seq copy;
  copy.pages.assign(s.pages.begin(), s.pages.begin() + len / page_size_);
  copy.length = len;
  for (int32_t p : copy.pages) ++shared_[p];
  seqs_[dst] = std::move(copy);
  return absl::OkStatus();
}

}  // namespace blockserve::runtime
