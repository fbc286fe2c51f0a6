// Fatal checks for broken internal invariants (never for untrusted input).
#pragma once

#include <cstdio>
#include <cstdlib>

#define BS_CHECK(cond)                                                               \
  do {                                                                               \
    if (!(cond)) {                                                                   \
      std::fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond);  \
      std::abort();                                                                  \
    }                                                                                \
  } while (0)
