#pragma once
/// @file stream_stores.hpp
/// Non-temporal ("streaming") stores for the arrays a pass writes without reading them: the
/// ascent's saved copy of w, and w itself where the descent restores it from that copy (the old
/// value is dead). A plain store of a line that is not in cache reads the line first; a streaming
/// store does not, so the ascent (w, g read; w written back; saved written) moves four arrays'
/// bytes instead of five. Past the caches only: a streaming store sends the line to memory, so the
/// next pass's read of it (the descent's read of the saved copy) misses where a plain store would
/// have left it in cache.
///
/// `stream_copy` writes with SSE2's `movntdq` (in every x86-64 build, VEX-encoded in the wide
/// clones). Elsewhere (FLATMIN_HAS_STREAM_STORES 0: nvcc, other architectures) it is a memcpy and
/// the automatic choice never streams. Whether a pass streams changes no bit, only where the stored
/// lines go: the environment variable FLATMIN_STREAM_STORES (on, off or auto) or
/// `force_stream_stores` says, else the size (`stream_threshold_bytes`).

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <string>

#include "../../kernels/sam_passes.hpp"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__)) && !defined(__CUDACC__) && \
    !defined(__CUDA_ARCH__)
#include <emmintrin.h>
#define FLATMIN_HAS_STREAM_STORES 1
#else
#define FLATMIN_HAS_STREAM_STORES 0
#endif

namespace flatmin::backend::host {

/// Copies n bytes from `from` to `to` (not overlapping) with streaming stores: the bytes up to
/// to's first 64-byte boundary and after its last one by memcpy, whole lines between by 16-byte
/// streaming stores. The stores are weakly ordered: `stream_fence` before another thread may read
/// them (backend::eigen fences at the end of each thread's share).
inline void stream_copy(const void* from, void* to, std::size_t n) {
#if FLATMIN_HAS_STREAM_STORES
  auto* d = static_cast<unsigned char*>(to);
  const auto* s = static_cast<const unsigned char*>(from);
  const std::size_t head = (64 - (reinterpret_cast<std::uintptr_t>(d) & 63)) & 63;
  if (n < head + 64) {
    std::memcpy(d, s, n);
    return;
  }
  std::memcpy(d, s, head);
  d += head;
  s += head;
  n -= head;
  for (; n >= 64; n -= 64, d += 64, s += 64) {
    const __m128i a = _mm_loadu_si128(reinterpret_cast<const __m128i*>(s));
    const __m128i b = _mm_loadu_si128(reinterpret_cast<const __m128i*>(s + 16));
    const __m128i c = _mm_loadu_si128(reinterpret_cast<const __m128i*>(s + 32));
    const __m128i e = _mm_loadu_si128(reinterpret_cast<const __m128i*>(s + 48));
    _mm_stream_si128(reinterpret_cast<__m128i*>(d), a);
    _mm_stream_si128(reinterpret_cast<__m128i*>(d + 16), b);
    _mm_stream_si128(reinterpret_cast<__m128i*>(d + 32), c);
    _mm_stream_si128(reinterpret_cast<__m128i*>(d + 48), e);
  }
  std::memcpy(d, s, n);
#else
  std::memcpy(to, from, n);
#endif
}

/// Orders this thread's streaming stores before its later stores (and so before the end of a
/// parallel region publishes them).
inline void stream_fence() {
#if FLATMIN_HAS_STREAM_STORES
  _mm_sfence();
#endif
}

/// The automatic choice: a pass streams its write-only array when the array has at least this
/// many bytes in all, whatever the thread count (the last-level cache is shared): 24 MiB, 6.3·10^6
/// fp32 entries. bench_passes' SAM-SGD and SAM-AdamW steps on the 2-core Xeon VM of
/// bench/RESULTS.md, streaming against plain stores, one thread: 2.1-2.4x as long at 10^5 entries,
/// 1.1-1.6x from 2.5·10^5 to 4·10^6, 0.88 (SGD) and 1.08 (AdamW) at 6·10^6, 0.71-0.90 at 8·10^6,
/// 10^7 and 2·10^7 (two threads alike at 4·10^6 and 10^7). Below, the step's arrays stay in the
/// last-level cache between its passes, and a streaming store sends the saved copy to memory just
/// before the descent reads it. Reproduce (bench/README.md): FLATMIN_BENCH_SIZES=4000000,6000000,
/// 8000000 and bench/ab.py over two wrappers of bench_passes, FLATMIN_STREAM_STORES=off and on.
/// On the 2-core AMD EPYC VM (32 KiB L1d per core, 32 MiB L3) the same steps at 10^7, streaming
/// against plain, read 0.87-1.25 (SGD) and 0.92-1.21 (AdamW) over four alternations of 3 to 15
/// rounds at one thread, 0.93 and 1.01 at two (staged by segments, before `staging_bytes`; by 4
/// KiB, 1.04 and 0.97 at one thread): neither a gain nor a clear loss there. (There, too, the
/// kept gradient's copy of GSAM, WSAM, LookSAM and RWP, staged in cache and streamed, took
/// 1.1-1.2x its plain stores' time, bench_passes keep_gradient: it stays plain.)
inline constexpr std::size_t stream_threshold_bytes = std::size_t{24} << 20;

namespace detail {
/// FLATMIN_STREAM_STORES read once: 1 on, 0 off, −1 auto; or why it cannot be read (then every
/// pass that could stream throws it, as FLATMIN_ISA does).
struct stream_request {
  int value = -1;
  std::string error;
};
inline stream_request read_stream_environment() {
  stream_request r;
  const char* e = std::getenv("FLATMIN_STREAM_STORES");
  const std::string s = e ? e : "";
  if (s.empty() || s == "auto")
    r.value = -1;
  else if (s == "on" || s == "1")
    r.value = 1;
  else if (s == "off" || s == "0")
    r.value = 0;
  else
    r.error = "flatmin: FLATMIN_STREAM_STORES must be on, off or auto, got '" + s + "'";
  return r;
}
inline const stream_request& environment_streams() {
  static const stream_request r = read_stream_environment();
  return r;
}
/// −2: none forced; else forced_streams' value (1 on, 0 off, −1 auto).
inline std::atomic<int> forced_streams{-2};
}  // namespace detail

/// The choices `force_stream_stores` takes.
enum class stream_stores : std::int8_t { automatic = -1, off = 0, on = 1 };

/// Whether a pass whose write-only array has `bytes` bytes streams it: the forced choice, else
/// FLATMIN_STREAM_STORES', else `bytes >= stream_threshold_bytes` (never where stream_copy is a
/// memcpy). Throws std::invalid_argument when FLATMIN_STREAM_STORES names no choice.
inline bool streams_writes(std::size_t bytes) {
  int v = detail::forced_streams.load(std::memory_order_relaxed);
  if (v == -2) {
    const detail::stream_request& r = detail::environment_streams();
    if (!r.error.empty()) throw std::invalid_argument(r.error);
    v = r.value;
  }
  if (v >= 0) return v == 1;
  return FLATMIN_HAS_STREAM_STORES != 0 && bytes >= stream_threshold_bytes;
}

/// Chooses from now on, in every thread, whether passes stream (for tests and measurements: not
/// while a pass runs); `automatic` by size.
inline void force_stream_stores(stream_stores s) {
  detail::forced_streams.store(static_cast<int>(s), std::memory_order_relaxed);
}
/// Undoes `force_stream_stores`: back to FLATMIN_STREAM_STORES's choice, or by size.
inline void unforce_stream_stores() { detail::forced_streams.store(-2, std::memory_order_relaxed); }

/// The passes that write an array without reading it. An ascent that saves w: the caller copies
/// w to the saved slots, then runs `without_save()`.
template <class F>
inline constexpr bool saves_weights = false;
template <class T, class Term, class Mask, class W, class Store>
inline constexpr bool saves_weights<kernels::ascend_pass<T, Term, Mask, W, Store, true>> = true;
/// A descent, which overwrites w where `overwrites_weights(flags)`: the caller may run such a
/// segment into a buffer and copy that out.
template <class F>
inline constexpr bool restores_weights = false;
template <class T, class Mask, class Adjust, class Base, int Restore, class W, class Store>
inline constexpr bool restores_weights<kernels::descend_pass<T, Mask, Adjust, Base, Restore, W, Store>> =
    true;

/// Bytes of a pass's output staged in cache before they go out by streaming stores (4 KiB), so
/// that the staging buffer and the pass's reads of the same entries (up to four more arrays, 16
/// KiB in fp32) fit a 32 KiB L1 together. A whole segment (16 KiB) at a time, the restoring
/// descent's buffer fell out of the AMD EPYC VM's 32 KiB L1 before it was copied out: streamed
/// at 4 KiB against 16 KiB there, bench_passes at 10^7, one thread, 11 rounds: descend_sgd 0.86,
/// descend_adamw 0.88, the SAM-SGD step 0.94 of the time.
inline constexpr std::size_t staging_bytes = 4096;
template <class W>
inline constexpr std::uint32_t staging_entries = static_cast<std::uint32_t>(staging_bytes / sizeof(W));

/// This thread's staging buffer (`staging_bytes`), 64-byte aligned; value-initialised once, and
/// afterwards holding whatever the last chunk left.
template <class W>
inline W* staging_buffer() {
  alignas(64) static thread_local W buffer[staging_entries<W>]{};
  return buffer;
}

}  // namespace flatmin::backend::host
