// Small Status helpers (Abseil 20220623 ships none).
#pragma once

#include "absl/status/status.h"
#include "absl/status/statusor.h"

#define BS_CONCAT_INNER_(a, b) a##b
#define BS_CONCAT_(a, b) BS_CONCAT_INNER_(a, b)

// Returns from the enclosing function when `expr` (an absl::Status) is not OK.
#define RETURN_IF_ERROR(expr)                  \
  do {                                         \
    ::absl::Status bs_status_ = (expr);        \
    if (!bs_status_.ok()) return bs_status_;   \
  } while (0)

// `ASSIGN_OR_RETURN(auto x, MakeX());` assigns the value or returns the error.
#define ASSIGN_OR_RETURN(lhs, rexpr) \
  BS_ASSIGN_OR_RETURN_IMPL_(BS_CONCAT_(bs_statusor_, __LINE__), lhs, rexpr)
#define BS_ASSIGN_OR_RETURN_IMPL_(tmp, lhs, rexpr) \
  auto tmp = (rexpr);                              \
  if (!tmp.ok()) return std::move(tmp).status();   \
  lhs = std::move(tmp).value()
