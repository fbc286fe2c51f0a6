#include "server/worker_wire.h"

#include "absl/strings/str_cat.h"
#include "blockzoo/manifest.h"
#include "runtime/status_macros.h"

namespace blockserve::server {

wire::BlockRef RefToProto(const scheduler::BlockRef& ref) {
  wire::BlockRef p;
  p.set_id(ref.id);
  p.set_kind(static_cast<wire::BlockKind>(ref.kind));
  p.set_layer(ref.layer);
  p.set_family_json(blockzoo::FamilyToJson(ref.family).dump());
  if (ref.options.weight_dtype) p.set_weight_dtype(runtime::DTypeName(*ref.options.weight_dtype));
  p.set_kv_page_size(ref.options.kv_page_size);
  p.set_kv_max_pages(ref.options.kv_max_pages);
  p.set_kv_dtype(runtime::DTypeName(ref.options.kv_dtype));
  return p;
}

absl::StatusOr<scheduler::BlockRef> RefFromProto(const wire::BlockRef& p) {
  scheduler::BlockRef ref;
  if (p.id().size() != 64) return absl::InvalidArgumentError("ref.id: not a 64-hex block id");
  ref.id = p.id();
  if (p.kind() < wire::BLOCK_KIND_EMBED || p.kind() > wire::BLOCK_KIND_HEAD) {
    return absl::InvalidArgumentError("ref.kind: unknown block kind");
  }
  ref.kind = static_cast<runtime::BlockKind>(p.kind());
  ref.layer = p.layer();
  const nlohmann::json family = nlohmann::json::parse(p.family_json(), nullptr, false);
  if (!family.is_object()) return absl::InvalidArgumentError("ref.family_json: not a JSON object");
  ASSIGN_OR_RETURN(ref.family, blockzoo::FamilyFromJson(family, "ref.family_json"));
  if (!p.weight_dtype().empty()) {
    ASSIGN_OR_RETURN(ref.options.weight_dtype, blockzoo::ParseDTypeName(p.weight_dtype()));
  }
  if (p.kv_page_size() <= 0 || p.kv_page_size() > 4096 || p.kv_max_pages() < 0) {
    return absl::InvalidArgumentError("ref.kv_page_size / kv_max_pages out of range");
  }
  ref.options.kv_page_size = p.kv_page_size();
  ref.options.kv_max_pages = p.kv_max_pages();
  ASSIGN_OR_RETURN(ref.options.kv_dtype,
                   runtime::ParseDType(p.kv_dtype(), {runtime::DType::kF32, runtime::DType::kBF16}));
  return ref;
}

grpc::Status ToGrpc(const absl::Status& s) {
  return grpc::Status(static_cast<grpc::StatusCode>(s.code()), std::string(s.message()));
}

absl::Status FromGrpc(const grpc::Status& s, const std::string& what) {
  if (s.ok()) return absl::OkStatus();
  return absl::Status(static_cast<absl::StatusCode>(s.error_code()),
                      absl::StrCat(what, ": ", s.error_message()));
}

}  // namespace blockserve::server
