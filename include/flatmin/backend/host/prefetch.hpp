#pragma once
/// @file prefetch.hpp
/// Host prefetch of a segment's first lines (backend::eigen asks for segment s + 1 before running
/// segment s).

#include <algorithm>
#include <cstddef>

#include "../layout.hpp"

namespace flatmin::backend::host {

/// Asks for the first lines of a segment's w and g before its turn: the active blocks of a
/// sparse mask are short runs scattered over memory, which the hardware prefetchers, starting
/// afresh at every run, would otherwise fetch one miss at a time.
template <class W, class G>
inline void prefetch_segment(const tensor_rec<W, G>* tensors, const segment& s) {
#if defined(__GNUC__)
  const tensor_rec<W, G>& t = tensors[s.tensor];
  const char* w = reinterpret_cast<const char*>(t.w + s.local);
  const char* g = reinterpret_cast<const char*>(t.g + s.local);
  // the wider type's extent (a prefetch past the end of the narrower run does not fault)
  constexpr std::size_t size = sizeof(W) > sizeof(G) ? sizeof(W) : sizeof(G);
  const std::size_t bytes = std::min<std::size_t>(std::size_t{s.len} * size, 1024);
  for (std::size_t b = 0; b < bytes; b += 64) {
    __builtin_prefetch(w + b, 1);
    __builtin_prefetch(g + b, 0);
  }
#else
  static_cast<void>(tensors);
  static_cast<void>(s);
#endif
}

}  // namespace flatmin::backend::host
