#pragma once
/// @file thrust.hpp
/// `backend::thrust`: the optimizer's state in `thrust::device_vector`, passes on
/// THRUST_DEVICE_SYSTEM (CUDA under nvcc; OMP or CPP when compiled by a host compiler).
///
/// **One launch per pass.** A pass over a segment list of `count` segments is one
/// `thrust::for_each` over the virtual index v ∈ [0, count · S) (S = `segment_size`, a power of
/// two): segment v / S, lane v % S; lanes at or past the segment's `len` return at once. The
/// segment list and the tensor table live in device memory, so 1 or 1000 tensors (or the active
/// blocks of a sparse mask) cost one launch; the idle lanes are at most one partial segment per
/// tensor. We chose this over a prefix-sum lookup (binary search per element) because it needs
/// no per-pass set-up and no search, and over one launch per tensor because that costs a launch
/// per tensor.
///
/// **Deterministic reductions.** `reduce` uses the summation order of summation.hpp, which
/// `backend::eigen` uses too: one thread per strand (`strand_partial`), the strands of a segment
/// combined pairwise, and the segment partials added in segment order on the host. The tree
/// depends only on the segment list, not on the device, the number of OpenMP threads or the
/// launch configuration, so results are bitwise identical run to run, for any
/// `OMP_NUM_THREADS`, and equal to `backend::eigen`'s (given the same
/// floating-point contraction: CUDA builds of the tests use `-fmad=false`). `reduce_index` and
/// `histogram` likewise (blocks of S; histogram counts are integers, hence exact).
/// The price on a GPU is that a reduction runs one thread per strand (N / 512 threads, each
/// reading with a stride of 8 elements; eight consecutive threads read one 32-byte sector) instead
/// of a tree over all elements. Each thread reads its next 32 terms before it adds them
/// (`strand_unroll`), so that the reads, not the chain of additions, set the pace; expect it
/// still to be slower than `thrust::reduce` for small N, where there are few strands.
/// `-DFLATMIN_THRUST_STRANDS=32` gives a GPU 4× more strands (still deterministic, no longer
/// bitwise equal to backend::eigen).
///
/// Writing code for this backend (policies, masks): everything a pass calls must be `FLATMIN_HD`
/// and trivially copyable (raw pointers, no std::vector, no virtuals, no exceptions). Prefer
/// named functors to lambdas: a lambda passed to `for_each_index` / `reduce_index` /
/// `histogram` must be marked `FLATMIN_HD` (nvcc: an extended lambda, enabled by flatmin::thrust
/// with --extended-lambda), and nvcc rejects extended lambdas defined in private or protected
/// member functions, in functions with a deduced return type, and inside non-extended lambdas.
///
/// **Streams.** Passes run on the calling thread's stream: the default stream unless a
/// `backend::thrust::stream_scope` names another (libtorch's adapter opens one on torch's current
/// stream for every step). Every pass returns once its work is done (`thrust::cuda::par`), and the
/// copies between host and device memory first wait for the stream, so work queued on that stream
/// before a pass is ordered before it, and host code may read what a pass wrote. Work on *other*
/// streams is not ordered with flatmin's: synchronise it first.
///
/// Memory: under CUDA only device memory (views tagged `memory_space::device`; `check_view`
/// asks the CUDA runtime and rejects host pointers). On the OMP and CPP systems device memory
/// *is* host memory, so both spaces are accepted.

#include <cstdint>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include <thrust/copy.h>
#include <thrust/device_vector.h>
#include <thrust/execution_policy.h>
#include <thrust/fill.h>
#include <thrust/for_each.h>
#include <thrust/iterator/counting_iterator.h>
#include <thrust/transform.h>
#include <thrust/transform_reduce.h>

#include "../params/thrust_views.hpp"
#include "layout.hpp"
#include "summation.hpp"

#if THRUST_DEVICE_SYSTEM == THRUST_DEVICE_SYSTEM_CUDA
#include <cuda_runtime_api.h>
#define FLATMIN_THRUST_IS_CUDA 1
#endif
#if THRUST_DEVICE_SYSTEM == THRUST_DEVICE_SYSTEM_OMP && defined(_OPENMP)
#include <omp.h>
#endif

namespace flatmin::backend {

namespace thrust_detail {

#if defined(FLATMIN_THRUST_IS_CUDA)
using stream_type = cudaStream_t;
#else
using stream_type = void*;  // the host device systems have no streams: the value is kept, not used
#endif

/// The calling thread's stream for backend::thrust's passes (`thrust::stream_scope`); null is the
/// default stream.
inline stream_type& stream_slot() {
  thread_local stream_type s{};
  return s;
}

/// The execution policy of every pass: under CUDA `thrust::cuda::par` on the thread's stream,
/// which returns once the pass's work is done; on the host systems `thrust::device`.
#if defined(FLATMIN_THRUST_IS_CUDA)
inline auto exec() { return ::thrust::cuda::par.on(stream_slot()); }
/// The same without the wait at its end: for a pass whose result only the next pass on the same
/// stream reads.
inline auto exec_nosync() { return ::thrust::cuda::par_nosync.on(stream_slot()); }
#else
inline const auto& exec() { return ::thrust::device; }
inline const auto& exec_nosync() { return ::thrust::device; }
#endif

/// Waits for the thread's stream (under CUDA; elsewhere nothing): before a copy between host and
/// device memory, which Thrust makes on the default stream.
inline void sync_stream() {
#if defined(FLATMIN_THRUST_IS_CUDA)
  const cudaError_t e = cudaStreamSynchronize(stream_slot());
  if (e != cudaSuccess)
    throw std::runtime_error(std::string("flatmin: backend thrust: cudaStreamSynchronize: ") +
                             cudaGetErrorString(e));
#endif
}

/// 1 where f(i) is non-zero (count_index).
template <class F>
struct nonzero {
  F f;
  FLATMIN_HD std::uint64_t operator()(std::size_t i) const { return f(i) != 0 ? 1u : 0u; }
};
struct add_u64 {
  FLATMIN_HD std::uint64_t operator()(std::uint64_t a, std::uint64_t b) const { return a + b; }
};
/// The count of non-zero f(i) over block b of `block` indices (count_index on the host systems).
template <class F>
struct block_count {
  std::size_t n, block;
  F f;
  FLATMIN_HD std::uint64_t operator()(std::size_t b) const {
    const std::size_t end = (b + 1) * block < n ? (b + 1) * block : n;
    std::uint64_t c = 0;
    for (std::size_t i = b * block; i < end; ++i) c += f(i) != 0 ? 1u : 0u;
    return c;
  }
};

// Strands per segment in reductions. The default, backend::reduction_strands, reproduces
// backend::eigen's summation tree bit for bit (everywhere). A GPU may prefer 32 (a warp reads
// consecutive elements) at the price of results that are still deterministic but no longer
// bitwise equal to backend::eigen's: the same order (summation.hpp) with another K.
#if defined(FLATMIN_THRUST_STRANDS)
inline constexpr std::uint32_t strands = FLATMIN_THRUST_STRANDS;
#else
inline constexpr std::uint32_t strands = reduction_strands;
#endif
static_assert(strands >= 1 && (strands & (strands - 1)) == 0 && strands <= 64,
              "FLATMIN_THRUST_STRANDS: a power of two <= 64");
/// Terms of a strand read before they are added (summation.hpp's `strand_partial`, same sums):
/// the reads a reduction thread has in flight. On every device system, so that the host systems'
/// tests run the code a GPU runs.
inline constexpr std::uint32_t strand_unroll = 32;

/// f(elem) for lane v % S of segment v / S.
template <class W, class G, class F>
struct segment_lanes {
  const tensor_rec<W, G>* tensors;
  const segment* segs;
  F f;
  FLATMIN_HD void operator()(std::size_t v) const {
    const segment& s = segs[v >> log2_segment_size];
    const auto lane = static_cast<std::uint32_t>(v & (segment_size - 1));
    if (lane >= s.len) return;
    const tensor_rec<W, G>& t = tensors[s.tensor];
    f(elem<W, G>{t.w[s.local + lane], t.g[s.local + lane], s.index + lane, s.slot + lane, s.tensor, t.flags});
  }
};

/// Strand r = u % K of segment u / K (K = `strands`, summation.hpp's `strand_partial`). With the
/// default K these are exactly the accumulators of backend::eigen.
template <class R, class W, class G, class F>
struct segment_strand {
  const tensor_rec<W, G>* tensors;
  const segment* segs;
  F f;
  FLATMIN_HD R operator()(std::size_t u) const {
    const segment& s = segs[u / strands];
    const auto r = static_cast<std::uint32_t>(u % strands);
    const tensor_rec<W, G>& t = tensors[s.tensor];
    W* w = t.w + s.local;
    G* g = t.g + s.local;
    return strand_partial<R, strands, strand_unroll>(s.len, r, [&](std::uint32_t j) {
      return f(elem<W, G>{w[j], g[j], s.index + j, s.slot + j, s.tensor, t.flags});
    });
  }
};

/// The K strands of segment s combined pairwise (backend::combine_strands).
template <class R>
struct combine_segment_strands {
  const R* strands_of;
  FLATMIN_HD R operator()(std::size_t s) const {
    R a[strands];
    for (std::uint32_t r = 0; r < strands; ++r) a[r] = strands_of[strands * s + r];
    return combine_strands<strands>(a);
  }
};

/// Sum of f(i) over block b of [0, n) (summation.hpp's `index_block_sum`).
template <class R, class F>
struct index_block {
  std::size_t n;
  F f;
  FLATMIN_HD R operator()(std::size_t b) const { return index_block_sum<R>(n, b, f); }
};

/// Counts of key(i) over one block into that block's own row (no two threads share a counter).
template <class F>
struct histogram_block {
  std::size_t n, block, bins;
  std::uint32_t* rows;
  F key;
  FLATMIN_HD void operator()(std::size_t b) const {
    std::uint32_t* h = rows + b * bins;
    const std::size_t lo = b * block, hi = lo + block < n ? lo + block : n;
    for (std::size_t i = lo; i < hi; ++i) {
      const auto k = static_cast<std::size_t>(key(i));
      if (k < bins) ++h[k];
    }
  }
};

/// CUDA: counts of key(i) by atomic adds into one of `copies` sub-histograms (copy i % copies), so
/// that the 32 lanes of a warp never add to the same counter even when their keys are equal.
template <class F>
struct histogram_atomic {
  F key;
  unsigned long long* rows;
  std::size_t bins, copies;
  FLATMIN_HD void operator()(std::size_t i) const {
    const auto k = static_cast<std::size_t>(key(i));
#if defined(__CUDA_ARCH__)
    if (k < bins) atomicAdd(rows + (i % copies) * bins + k, 1ull);
#else
    if (k < bins) ++rows[(i % copies) * bins + k];  // not used on the host systems
#endif
  }
};

/// Column k of the per-block rows, summed.
template <class C>
struct histogram_column {
  const C* rows;
  std::size_t nblocks, bins;
  FLATMIN_HD std::uint64_t operator()(std::size_t k) const {
    std::uint64_t c = 0;
    for (std::size_t b = 0; b < nblocks; ++b) c += rows[b * bins + k];
    return c;
  }
};

/// count_and_collect: the two counts of one index, their sum, and the "collect" predicate.
template <class F>
struct code_counts {
  F code;
  FLATMIN_HD count_collect_result operator()(std::size_t i) const {
    const std::uint32_t c = code(i);
    return {c == 1 ? 1u : 0u, c == 2 ? 1u : 0u};
  }
};
struct add_counts {
  FLATMIN_HD count_collect_result operator()(const count_collect_result& a,
                                             const count_collect_result& b) const {
    return {a.counted + b.counted, a.collected + b.collected};
  }
};
template <class F>
struct code_is_two {
  F code;
  FLATMIN_HD bool operator()(std::size_t i) const { return code(i) == 2; }
};

/// count_and_collect on the host systems: the counts of one block of indices, and the indices of
/// its 2s written from `start[b]` (Thrust's OMP copy_if runs serially).
template <class F>
struct block_code_counts {
  std::size_t n, block;
  F code;
  FLATMIN_HD count_collect_result operator()(std::size_t b) const {
    count_collect_result r;
    const std::size_t lo = b * block, hi = lo + block < n ? lo + block : n;
    for (std::size_t i = lo; i < hi; ++i) {
      const std::uint32_t c = code(i);
      r.counted += c == 1;
      r.collected += c == 2;
    }
    return r;
  }
};
template <class F>
struct block_code_collect {
  std::size_t n, block;
  F code;
  const std::uint64_t* start;
  std::uint64_t* out;
  FLATMIN_HD void operator()(std::size_t b) const {
    std::uint64_t* o = out + start[b];
    const std::size_t lo = b * block, hi = lo + block < n ? lo + block : n;
    for (std::size_t i = lo; i < hi; ++i)
      if (code(i) == 2) *o++ = i;
  }
};

/// Per-thread device buffer of at least `n` elements of R (slot `which` of two), reused by every
/// reduction so that a step allocates no device memory once it has run; every element a caller
/// reads it has written first. Leaked on purpose: a static device_vector would be freed after the
/// CUDA runtime has shut down at exit.
template <class R, int which>
R* scratch(std::size_t n) {
  thread_local ::thrust::device_vector<R>* v = new ::thrust::device_vector<R>();
  if (v->size() < n) {
    v->clear();
    v->shrink_to_fit();
    v->resize(n);
  }
  return ::thrust::raw_pointer_cast(v->data());
}

/// Adds `n` device partials in order on the host (the last level of the fixed tree).
template <class R>
R sum_in_order(const R* partial, std::size_t n) {
  thread_local std::vector<R> h;
  h.resize(n);
  const auto p = ::thrust::device_pointer_cast(partial);
  sync_stream();
  ::thrust::copy(p, p + n, h.begin());
  R total{};
  for (std::size_t i = 0; i < n; ++i) total = total + h[i];
  return total;
}

}  // namespace thrust_detail

/// The Thrust backend. All functions are static; state lives in `vector<T>`.
struct thrust {
  static constexpr const char* name = "thrust";
  /// Elements per segment (summation.hpp): the same as backend::eigen's, so that both backends
  /// cut tensors identically and reduce in the same order.
  static constexpr std::size_t segment_size = backend::segment_size;
  /// On the host device systems (OMP, CPP), passes over fewer elements than this run as plain
  /// loops on the calling thread (as in backend::eigen), with the same functors and the same
  /// summation tree, so that small problems do not pay for OpenMP regions and temporary vectors.
  static constexpr std::size_t parallel_threshold = 1u << 16;

  /// `cudaStream_t` under CUDA; on the host device systems an opaque pointer, kept and not used.
  using stream_type = thrust_detail::stream_type;
  /// The stream the calling thread's passes run on (null: the default stream).
  static stream_type stream() { return thrust_detail::stream_slot(); }
  /// Runs the calling thread's passes on `s` until the scope ends, then restores the stream it
  /// found (scopes nest). It does not synchronise anything itself (see "Streams" above).
  ///
  ///     { flatmin::backend::thrust::stream_scope on(stream); opt.ascend(); ...; opt.descend(); }
  class stream_scope {
   public:
    explicit stream_scope(stream_type s) : previous_(std::exchange(thrust_detail::stream_slot(), s)) {}
    ~stream_scope() { thrust_detail::stream_slot() = previous_; }
    stream_scope(const stream_scope&) = delete;
    stream_scope& operator=(const stream_scope&) = delete;

   private:
    stream_type previous_;
  };

  template <class T>
  using vector = ::thrust::device_vector<T>;
  template <class T>
  using table = vector<T>;

  /// Where `vector<T>` lives, and whether host code may read it (data_parallel's buffers: a
  /// communicator of host memory can move them only on the host device systems).
  static constexpr memory_space vector_space = memory_space::device;
#if defined(FLATMIN_THRUST_IS_CUDA)
  static constexpr bool host_addressable = false;
#else
  static constexpr bool host_addressable = true;
#endif

  /// Under CUDA: device memory only. On OMP/CPP device memory is host memory: both.
  static bool accepts(memory_space s) {
#if defined(FLATMIN_THRUST_IS_CUDA)
    return s == memory_space::device;
#else
    return s == memory_space::device || s == memory_space::host;
#endif
  }

  /// Under CUDA, rejects a view whose value or gradient pointer is not device (or managed)
  /// memory, as far as the CUDA runtime can tell. Elsewhere every pointer is reachable.
  template <class View>
  static void check_view(const View& v) {
#if defined(FLATMIN_THRUST_IS_CUDA)
    auto check = [&](const void* p, const char* what) {
      cudaPointerAttributes a{};
      const cudaError_t e = cudaPointerGetAttributes(&a, p);
      if (e != cudaSuccess) {
        static_cast<void>(
            cudaGetLastError());  // a non-sticky error: clear it so that later CUDA calls do not report it
        throw usage_error("flatmin: the " + std::string(what) + " of tensor " +
                          flatmin::detail::quote(v.name) + " is not memory the CUDA runtime knows (" +
                          cudaGetErrorString(e) + ")");
      }
      if (a.type != cudaMemoryTypeDevice && a.type != cudaMemoryTypeManaged)
        throw usage_error("flatmin: the " + std::string(what) + " of tensor " +
                          flatmin::detail::quote(v.name) +
                          " is host memory; backend thrust (CUDA) needs device or managed memory");
    };
    check(v.value, "value");
    check(v.grad, "gradient");
#else
    static_cast<void>(v);
#endif
  }

  template <class T>
  static vector<T> make_vector(std::size_t n, T value = T{}) {
    return vector<T>(n, value);
  }
  template <class T>
  static vector<T> from_host(const std::vector<T>& h) {
    return vector<T>(h.begin(), h.end());
  }
  template <class T>
  static std::vector<T> to_host(const vector<T>& v) {
    std::vector<T> h(v.size());
    // An empty std::vector's data() may be null, which Thrust's copy must not be handed.
    if (!h.empty()) {
      thrust_detail::sync_stream();
      ::thrust::copy(v.begin(), v.end(), h.begin());
    }
    return h;
  }
  template <class T>
  static T* data(vector<T>& v) {
    return ::thrust::raw_pointer_cast(v.data());
  }
  template <class T>
  static const T* data(const vector<T>& v) {
    return ::thrust::raw_pointer_cast(v.data());
  }
  template <class T>
  static void fill(vector<T>& v, T value) {
    ::thrust::fill(thrust_detail::exec(), v.begin(), v.end(), value);
  }
  template <class T>
  static void copy(const vector<T>& from, vector<T>& to) {
    if (to.size() != from.size()) to.resize(from.size());
    copy_n(data(from), from.size(), data(to));
  }
  /// n elements from `from` to `to`: within device memory (copy_n), from host memory into device
  /// memory (upload), from device memory into host memory (download). Synchronous.
  template <class T>
  static void copy_n(const T* from, std::size_t n, T* to) {
    if (n)
      ::thrust::copy(thrust_detail::exec(), ::thrust::device_pointer_cast(from),
                     ::thrust::device_pointer_cast(from + n), ::thrust::device_pointer_cast(to));
  }
  template <class T>
  static void upload(const T* host, std::size_t n, T* to) {
    if (n == 0) return;
    thrust_detail::sync_stream();
    ::thrust::copy(host, host + n, ::thrust::device_pointer_cast(to));
  }
  template <class T>
  static void download(const T* from, std::size_t n, T* host) {
    if (n == 0) return;
    thrust_detail::sync_stream();
    ::thrust::copy(::thrust::device_pointer_cast(from), ::thrust::device_pointer_cast(from + n), host);
  }

  /// Runs `f(elem<W, G>)` for every element of the range: one launch.
  template <class W, class G, class F>
  static void for_each(const pass_range<W, G>& r, const F& f) {
    if (r.count == 0) return;
    const thrust_detail::segment_lanes<W, G, F> lanes{r.tensors, r.segments, f};
#if !defined(FLATMIN_THRUST_IS_CUDA)
    if (r.elements < parallel_threshold) {
      for (std::size_t s = 0; s < r.count; ++s)
        for (std::size_t j = 0; j < r.segments[s].len; ++j) lanes(s * segment_size + j);
      return;
    }
#endif
    ::thrust::counting_iterator<std::size_t> first(0);
    ::thrust::for_each(thrust_detail::exec(), first, first + r.count * segment_size, lanes);
  }

  /// Sum over the range of `f(elem<W, G>) -> R`, in backend::eigen's summation order: the
  /// segments' partials (reduce_segments) added in segment order from R{}.
  template <class R, class W, class G, class F>
  static R reduce(const pass_range<W, G>& r, const F& f) {
    if (r.count == 0) return R{};
#if !defined(FLATMIN_THRUST_IS_CUDA)
    if (r.elements < parallel_threshold) {
      R total{};
      for (std::size_t s = 0; s < r.count; ++s) total = total + small_segment<R>(r, f, s);
      return total;
    }
#endif
    return thrust_detail::sum_in_order(device_partials<R>(r, f), r.count);
  }
  /// reduce()'s partial sums, one per segment of the range, in segment order, in host memory (a
  /// sharded run adds every process's partials in the one-process order: stats_reducer.hpp).
  template <class R, class W, class G, class F>
  static std::vector<R> reduce_segments(const pass_range<W, G>& r, const F& f) {
    std::vector<R> out(r.count);
    if (r.count == 0) return out;
#if !defined(FLATMIN_THRUST_IS_CUDA)
    if (r.elements < parallel_threshold) {
      for (std::size_t s = 0; s < r.count; ++s) out[s] = small_segment<R>(r, f, s);
      return out;
    }
#endif
    const auto p = ::thrust::device_pointer_cast(device_partials<R>(r, f));
    thrust_detail::sync_stream();
    ::thrust::copy(p, p + r.count, out.begin());
    return out;
  }

  /// Runs `f(i)` for i in [0, n): one launch.
  template <class F>
  static void for_each_index(std::size_t n, const F& f) {
    if (n == 0) return;
#if !defined(FLATMIN_THRUST_IS_CUDA)
    if (n < parallel_threshold) {
      for (std::size_t i = 0; i < n; ++i) f(i);
      return;
    }
#endif
    ::thrust::counting_iterator<std::size_t> first(0);
    ::thrust::for_each(thrust_detail::exec(), first, first + n, f);
  }

  /// Runs `f(i)` for i in [0, n) and counts the i where it returns non-zero: one thread per index
  /// (an integer count is exact in any order), where reduce_index runs one per block of S indices
  /// — too few threads on a GPU when each f(i) is itself a loop (a block mask's unit scores).
  template <class F>
  static std::uint64_t count_index(std::size_t n, const F& f) {
    if (n == 0) return 0;
    ::thrust::counting_iterator<std::size_t> first(0);
#if defined(FLATMIN_THRUST_IS_CUDA)
    return ::thrust::transform_reduce(thrust_detail::exec(), first, first + n, thrust_detail::nonzero<F>{f},
                                      std::uint64_t{0}, thrust_detail::add_u64{});
#else
    // Host systems: blocks of indices counted apart, then added (as count_and_collect: Thrust's own
    // OMP reduce binds a null execution-policy reference, which UBSan reports).
    std::uint64_t total = 0;
    if (n < parallel_threshold) {
      for (std::size_t i = 0; i < n; ++i) total += f(i) != 0 ? 1u : 0u;
      return total;
    }
    const std::size_t nb = (n + segment_size - 1) / segment_size;
    ::thrust::device_vector<std::uint64_t> per(nb);
    ::thrust::transform(thrust_detail::exec(), first, first + nb, per.begin(),
                        thrust_detail::block_count<F>{n, segment_size, f});
    std::vector<std::uint64_t> h(nb);
    ::thrust::copy(per.begin(), per.end(), h.begin());
    for (const std::uint64_t c : h) total += c;
    return total;
#endif
  }

  /// Sum of `f(i) -> R` for i in [0, n), in blocks of `segment_size` (backend::eigen's order).
  template <class R, class F>
  static R reduce_index(std::size_t n, const F& f) {
    const std::size_t nb = (n + segment_size - 1) / segment_size;
    if (nb == 0) return R{};
#if !defined(FLATMIN_THRUST_IS_CUDA)
    if (n < parallel_threshold) {
      const thrust_detail::index_block<R, F> block{n, f};
      R total{};
      for (std::size_t b = 0; b < nb; ++b) total = total + block(b);
      return total;
    }
#endif
    ::thrust::counting_iterator<std::size_t> first(0);
    R* partial = thrust_detail::scratch<R, 1>(nb);
    ::thrust::transform(thrust_detail::exec(), first, first + nb, ::thrust::device_pointer_cast(partial),
                        thrust_detail::index_block<R, F>{n, f});
    return thrust_detail::sum_in_order(partial, nb);
  }

  /// Counts of `key(i)` over i in [0, n): key returns a bin in [0, bins), or `bins` (or more) to
  /// leave i out. On the host systems each block of the index space counts into its own row of
  /// 32-bit counters (blocks grow so that the rows stay under 64 MiB); under CUDA every index adds
  /// atomically into one of 64 sub-histograms. The rows are then summed per bin: integer counts,
  /// exact in any order.
  template <class F>
  static std::vector<std::uint64_t> histogram(std::size_t n, std::size_t bins, const F& key) {
    std::vector<std::uint64_t> counts(bins, 0);
    if (n == 0 || bins == 0) return counts;
#if !defined(FLATMIN_THRUST_IS_CUDA)
    if (n < parallel_threshold) {
      for (std::size_t i = 0; i < n; ++i) {
        const auto k = static_cast<std::size_t>(key(i));
        if (k < bins) ++counts[k];
      }
      return counts;
    }
#endif
    ::thrust::counting_iterator<std::size_t> first(0);
#if defined(FLATMIN_THRUST_IS_CUDA)
    // One thread per index, atomic adds into 64 sub-histograms: a thread per block of indices
    // (below) leaves a GPU mostly idle and its rows uncoalesced (bench_cuda_passes'
    // bm_fisher_refresh, bench/RESULTS.md). The rows and the column sums are the thread's scratch
    // (a radix selection makes three or more histograms in a row; fresh vectors were a cudaMalloc
    // and a cudaFree each, and cudaFree waits for the device).
    constexpr std::size_t copies = 64;
    unsigned long long* rows = thrust_detail::scratch<unsigned long long, 0>(copies * bins);
    std::uint64_t* col = thrust_detail::scratch<std::uint64_t, 1>(bins);
    ::thrust::fill_n(thrust_detail::exec_nosync(), ::thrust::device_pointer_cast(rows), copies * bins, 0ull);
    ::thrust::for_each(thrust_detail::exec_nosync(), first, first + n,
                       thrust_detail::histogram_atomic<F>{key, rows, bins, copies});
    ::thrust::transform(thrust_detail::exec(), first, first + bins, ::thrust::device_pointer_cast(col),
                        thrust_detail::histogram_column<unsigned long long>{rows, copies, bins});
    download(col, bins, counts.data());
#else
    ::thrust::device_vector<std::uint64_t> col(bins);
    std::size_t block = segment_size;
    while (((n + block - 1) / block) * bins > (std::size_t{1} << 24)) block *= 2;
    const std::size_t nb = (n + block - 1) / block;
    ::thrust::device_vector<std::uint32_t> rows(nb * bins, 0u);
    ::thrust::for_each(thrust_detail::exec(), first, first + nb,
        thrust_detail::histogram_block<F>{n, block, bins, ::thrust::raw_pointer_cast(rows.data()), key});
    ::thrust::transform(thrust_detail::exec(), first, first + bins, col.begin(),
        thrust_detail::histogram_column<std::uint32_t>{::thrust::raw_pointer_cast(rows.data()), nb, bins});
    ::thrust::copy(col.begin(), col.end(), counts.begin());
#endif
    return counts;
  }

  /// One pass over i in [0, n) with `code(i)` in {0, 1, 2}: counts the 1s and the 2s, then (a
  /// second pass, only when there are at most `cap` 2s) writes the indices of the 2s in ascending
  /// order to `out` (device memory): under CUDA a transform_reduce and a stable copy_if, on the
  /// host systems per-block counts and per-block writes. Integer counts: exact.
  template <class F>
  static count_collect_result count_and_collect(std::size_t n, const F& code, std::uint64_t* out,
                                                std::size_t cap) {
    if (n == 0) return {};
#if !defined(FLATMIN_THRUST_IS_CUDA)
    if (n < parallel_threshold) {
      count_collect_result r;
      for (std::size_t i = 0; i < n; ++i) {
        const std::uint32_t c = code(i);
        r.counted += c == 1;
        if (c == 2 && r.collected++ < cap) out[r.collected - 1] = i;
      }
      return r;
    }
#endif
    ::thrust::counting_iterator<std::size_t> first(0);
#if defined(FLATMIN_THRUST_IS_CUDA)
    const count_collect_result r =
        ::thrust::transform_reduce(thrust_detail::exec(), first, first + n,
                                   thrust_detail::code_counts<F>{code}, count_collect_result{},
                                   thrust_detail::add_counts{});
    if (r.collected <= cap)
      ::thrust::copy_if(thrust_detail::exec(), first, first + n, ::thrust::device_pointer_cast(out),
                        thrust_detail::code_is_two<F>{code});
    return r;
#else
    // blocks of indices: count, place each block's 2s after the earlier blocks', write them
    const std::size_t nb = (n + segment_size - 1) / segment_size;
    ::thrust::device_vector<count_collect_result> per(nb);
    ::thrust::transform(thrust_detail::exec(), first, first + nb, per.begin(),
                        thrust_detail::block_code_counts<F>{n, segment_size, code});
    std::vector<count_collect_result> h(nb);
    ::thrust::copy(per.begin(), per.end(), h.begin());
    std::vector<std::uint64_t> start(nb);
    count_collect_result r;
    for (std::size_t b = 0; b < nb; ++b) {
      start[b] = r.collected;
      r.counted += h[b].counted;
      r.collected += h[b].collected;
    }
    if (r.collected <= cap) {
      const ::thrust::device_vector<std::uint64_t> dstart(start.begin(), start.end());
      ::thrust::for_each(thrust_detail::exec(), first, first + nb,
                         thrust_detail::block_code_collect<F>{
                             n, segment_size, code, ::thrust::raw_pointer_cast(dstart.data()), out});
    }
    return r;
#endif
  }

  /// Number of host threads a pass uses (1 for CUDA and CPP).
  static int threads() {
#if THRUST_DEVICE_SYSTEM == THRUST_DEVICE_SYSTEM_OMP && defined(_OPENMP)
    return omp_get_max_threads();
#else
    return 1;
#endif
  }

 private:
  /// Segment s's partial on the calling thread (the host systems' small ranges).
  template <class R, class W, class G, class F>
  static R small_segment(const pass_range<W, G>& r, const F& f, std::size_t s) {
    constexpr std::size_t k = thrust_detail::strands;
    const thrust_detail::segment_strand<R, W, G, F> strand{r.tensors, r.segments, f};
    R a[k];
    for (std::size_t j = 0; j < k; ++j) a[j] = strand(s * k + j);
    return combine_strands<k>(a);
  }
  /// Every segment's partial, in device scratch memory (valid until the next reduction).
  template <class R, class W, class G, class F>
  static R* device_partials(const pass_range<W, G>& r, const F& f) {
    constexpr std::size_t k = thrust_detail::strands;
    ::thrust::counting_iterator<std::size_t> first(0);
    R* strands = thrust_detail::scratch<R, 0>(k * r.count);
    R* partial = thrust_detail::scratch<R, 1>(r.count);
    ::thrust::transform(thrust_detail::exec_nosync(), first, first + k * r.count,
                        ::thrust::device_pointer_cast(strands),
                        thrust_detail::segment_strand<R, W, G, F>{r.tensors, r.segments, f});
    ::thrust::transform(thrust_detail::exec(), first, first + r.count, ::thrust::device_pointer_cast(partial),
                        thrust_detail::combine_segment_strands<R>{strands});
    return partial;
  }
};

}  // namespace flatmin::backend
