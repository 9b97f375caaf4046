#pragma once
/// @file eigen.hpp
/// `backend::eigen`: host memory, OpenMP threads, deterministic reductions.
///
/// Elementwise passes are plain `restrict` loops over each segment (they measured at least as fast
/// as the equivalent Eigen array expressions and accept any functor), parallelised over segments
/// with OpenMP when the pass is large enough. Each segment's loop runs a local copy of the functor
/// in its form for that tensor (layout.hpp's `for_tensor`: per-tensor lr multipliers resolved),
/// made once per run of segments that share it (host/tensor_forms.hpp), so that the compiler keeps
/// its fields in registers and can vectorise; kernels keep their bodies free of branches on
/// run-time options for the same reason (kernels/sgd_update.hpp).
/// Reductions sum each segment on its own, in a fixed order, into its own partial and then add
/// the partials in segment order, so results are bitwise identical for any thread count, with or
/// without OpenMP. Each segment is summed in the order of summation.hpp: by the pass's host group
/// form over `reduction_group` segments when backend/host/ has one (a SIMD form), else element by
/// element. Passes with a host segment form (backend/host/segment_forms.hpp) run by it. The hot
/// passes run compiled for the CPU's widest instruction set, chosen once per process, with the same
/// bits (backend/host/isa_clones.hpp; FLATMIN_ISA forces one). Large passes write the arrays they
/// do not read (the ascent's saved copy, the restored weights) by streaming stores
/// (backend/host/stream_stores.hpp; FLATMIN_STREAM_STORES chooses).

#include <algorithm>
#include <bit>
#include <concepts>
#include <cstdlib>
#include <memory>
#include <new>
#include <vector>

#include "host/isa_clones.hpp"
#include "host/prefetch.hpp"
#include "host/reduce_forms.hpp"
#include "host/segment_forms.hpp"
#include "host/stream_stores.hpp"
#include "host/tensor_forms.hpp"
#include "layout.hpp"
#include "summation.hpp"

#if defined(_OPENMP)
#include <omp.h>
#endif

namespace flatmin::backend {

namespace detail {
/// 64-byte aligned allocator for the optimizer's state.
template <class T>
struct aligned_allocator {
  using value_type = T;
  aligned_allocator() = default;
  template <class U>
  aligned_allocator(const aligned_allocator<U>&) noexcept {}
  T* allocate(std::size_t n) {
    if (n == 0) return nullptr;
    const std::size_t bytes = ((n * sizeof(T) + 63) / 64) * 64;
    void* p = std::aligned_alloc(64, bytes);
    if (!p) throw std::bad_alloc();
    return static_cast<T*>(p);
  }
  void deallocate(T* p, std::size_t) noexcept { std::free(p); }
  template <class U>
  bool operator==(const aligned_allocator<U>&) const noexcept {
    return true;
  }
};
}  // namespace detail

/// The host backend. All functions are static; state lives in `vector<T>`.
struct eigen {
  static constexpr const char* name = "eigen";
  /// Elements per segment (summation.hpp).
  static constexpr std::size_t segment_size = backend::segment_size;
  /// Passes smaller than this run on the calling thread.
  static constexpr std::size_t parallel_threshold = 1u << 16;

  template <class T>
  using vector = std::vector<T, detail::aligned_allocator<T>>;
  template <class T>
  using table = vector<T>;

  static bool accepts(memory_space s) { return s == memory_space::host; }
  /// Where `vector<T>` lives, and whether host code may read it (data_parallel's buffers).
  static constexpr memory_space vector_space = memory_space::host;
  static constexpr bool host_addressable = true;

  template <class T>
  static vector<T> make_vector(std::size_t n, T value = T{}) {
    return vector<T>(n, value);
  }
  template <class T>
  static vector<T> from_host(const std::vector<T>& h) {
    return vector<T>(h.begin(), h.end());
  }
  template <class T, class A>
  static std::vector<T> to_host(const std::vector<T, A>& v) {
    return std::vector<T>(v.begin(), v.end());
  }
  template <class T, class A>
  static T* data(std::vector<T, A>& v) {
    return v.data();
  }
  template <class T, class A>
  static const T* data(const std::vector<T, A>& v) {
    return v.data();
  }
  template <class T, class A>
  static void fill(std::vector<T, A>& v, T value) {
    std::fill(v.begin(), v.end(), value);
  }
  template <class T, class A>
  static void copy(const std::vector<T, A>& from, std::vector<T, A>& to) {
    to.assign(from.begin(), from.end());
  }
  /// n elements from `from` to `to`: within the backend's memory (copy_n), from host memory into
  /// it (upload), from it into host memory (download). Here all three are host copies.
  template <class T>
  static void copy_n(const T* from, std::size_t n, T* to) {
    std::copy(from, from + n, to);
  }
  template <class T>
  static void upload(const T* host, std::size_t n, T* to) {
    std::copy(host, host + n, to);
  }
  template <class T>
  static void download(const T* from, std::size_t n, T* host) {
    std::copy(from, from + n, host);
  }

  /// Runs `f(elem<W, G>)` for every element of the range, or the pass's host segment form per
  /// segment when it has one and W = G (backend/host/segment_forms.hpp; the saved slot of the
  /// segment's first element as `slot`). The array a pass writes without reading it (the
  /// ascent's saved copy, w where the descent restores it) is written with streaming stores when
  /// host/stream_stores.hpp says so; the bits are the same.
  template <class W, class G, class F>
  static void for_each(const pass_range<W, G>& r, const F& f) {
    const tensor_rec<W, G>* tensors = r.tensors;
    if constexpr (host::saves_weights<F>) {
      if (host::streams_writes(r.elements * sizeof(W))) {
        // w of each perturbed segment copied to its slots by streaming stores, then moved
        each_segment(r, f.without_save(), true, [&](const segment& s, const auto& form) {
          const tensor_rec<W, G>& t = tensors[s.tensor];
          if (t.flags & tensor_flags::perturb)
            host::stream_copy(t.w + s.local, form.saved + s.slot, sizeof(W) * s.len);
          segment_pass(tensors, s, form);
        });
        return;
      }
    }
    if constexpr (host::restores_weights<F>) {
      if (f.restores() && host::streams_writes(r.elements * sizeof(W))) {
        // a segment whose old w is dead runs into a buffer in cache, copied out by streaming stores
        each_segment(r, f, true, [&](const segment& s, const F& form) {
          const tensor_rec<W, G>& t = tensors[s.tensor];
          if (!form.overwrites_weights(t.flags)) return segment_pass(tensors, s, form);
          W* buffer = host::staging_buffer<W>();
          constexpr std::uint32_t C = host::staging_entries<W>;
          // in chunks of C entries: the buffer stays in L1 beside the reads of the same entries
          for (std::uint32_t j0 = 0; j0 < s.len; j0 += C) {
            const std::uint32_t n = s.len - j0 < C ? s.len - j0 : C;
            const segment part{s.index + j0, s.local + j0, s.slot + j0, s.tensor, n};
            run_segment(tensors, part, form, buffer);
            host::stream_copy(buffer, t.w + part.local, sizeof(W) * part.len);
          }
        });
        return;
      }
    }
    each_segment(r, f, false, [&](const segment& s, const F& form) { segment_pass(tensors, s, form); });
  }

  /// Segments a host group form of a reduction reads side by side (backend/host/reduce_forms.hpp),
  /// a quarter of a thread's share apart (reduce_groups): four read streams per core keep its
  /// hardware prefetchers busier than one (with the eight strands of summation.hpp, bench_passes'
  /// global_norm at N = 10^7 on one core went from 8.3 to 4.3 ms on an AVX2 machine:
  /// bench/RESULTS.md). It does not change any segment's summation order.
  static constexpr std::uint32_t reduction_group = 4;

  /// Sum over the range of `f(elem<W, G>) -> R` (R has `+` and value-initialises to zero): the
  /// segments' partials (reduce_segments) added in segment order from R{}.
  template <class R, class W, class G, class F>
  static R reduce(const pass_range<W, G>& r, const F& f) {
    if (r.count == 0) return R{};
    R total{};
    for (const R& p : segment_partials<R>(r, f)) total = total + p;
    return total;
  }
  /// reduce()'s partial sums, one per segment of the range, in segment order (a sharded run adds
  /// every process's partials in the one-process order: optimizer/stats_reducer.hpp).
  template <class R, class W, class G, class F>
  static std::vector<R> reduce_segments(const pass_range<W, G>& r, const F& f) {
    if (r.count == 0) return {};
    const std::vector<R>& p = segment_partials<R>(r, f);
    return std::vector<R>(p.begin(), p.end());
  }

 private:
  template <class R, class W, class G, class F>
  static std::vector<R>& segment_partials(const pass_range<W, G>& r, const F& f) {
    const auto nseg = static_cast<std::ptrdiff_t>(r.count);
    const tensor_rec<W, G>* tensors = r.tensors;
    const segment* segs = r.segments;
    std::vector<R>& partial = scratch<R>(static_cast<std::size_t>(nseg));
    R* out = partial.data();
    // a hot pass runs each thread's groups or segments on the process's instruction set
    // (host/isa_clones.hpp)
    const bool parallel = r.elements >= parallel_threshold;
    if constexpr (host::has_group_form<F, R, W, G, reduction_group>) {
      run_split<host::dispatched<F, W, G>>(nseg, parallel, [&](std::ptrdiff_t from, std::ptrdiff_t to) {
        reduce_groups<R>(tensors, segs, from, to, f, out);
      });
    } else {
      run_split<host::dispatched<F, W, G>>(nseg, parallel, [&](std::ptrdiff_t from, std::ptrdiff_t to) {
        for (std::ptrdiff_t s = from; s < to; ++s) out[s] = reduce_segment<R>(tensors, segs[s], f);
      });
    }
    return partial;
  }

 public:

  /// Runs `f(i)` for i in [0, n) (passes over the optimizer's own state).
  /// A functor with `isa_cloned` (host/isa_clones.hpp's hot_index_pass) runs each thread's
  /// indices on the process's instruction set.
  template <class F>
  static void for_each_index(std::size_t n, const F& f) {
    run_split<host::hot_index_pass<F>>(static_cast<std::ptrdiff_t>(n), n >= parallel_threshold,
                                       [&](std::ptrdiff_t from, std::ptrdiff_t to) {
      for (std::ptrdiff_t i = from; i < to; ++i) f(static_cast<std::size_t>(i));
    });
  }

  /// Sum of `f(i) -> R` for i in [0, n), in fixed blocks of `segment_size` (summation.hpp;
  /// thread-count invariant).
  template <class R, class F>
  static R reduce_index(std::size_t n, const F& f) {
    const std::size_t nb = (n + segment_size - 1) / segment_size;
    std::vector<R>& partial = scratch<R>(nb);
    const auto nbb = static_cast<std::ptrdiff_t>(nb);
#if defined(_OPENMP)
#pragma omp parallel for schedule(static) if (n >= parallel_threshold)
#endif
    for (std::ptrdiff_t b = 0; b < nbb; ++b)
      partial[b] = index_block_sum<R>(n, static_cast<std::size_t>(b), f);
    R total{};
    for (const R& p : partial) total = total + p;
    return total;
  }

  /// Runs `f(i)` for i in [0, n) and counts the i where it returns non-zero (a count: exact in
  /// any order, so the work is spread over every index, not over fixed blocks as in reduce_index).
  template <class F>
  static std::uint64_t count_index(std::size_t n, const F& f) {
    const auto nn = static_cast<std::ptrdiff_t>(n);
    std::uint64_t c = 0;
#if defined(_OPENMP)
#pragma omp parallel for schedule(static) reduction(+ : c) if (n >= parallel_threshold)
#endif
    for (std::ptrdiff_t i = 0; i < nn; ++i) c += f(static_cast<std::size_t>(i)) != 0 ? 1u : 0u;
    return c;
  }

  /// Counts of `key(i)` over i in [0, n): key returns a bin in [0, bins), or `bins` (or more) to
  /// leave i out. Integer counts, so the result is exact and thread-count invariant.
  template <class F>
  static std::vector<std::uint64_t> histogram(std::size_t n, std::size_t bins, const F& key) {
    const std::size_t nb = (n + segment_size * 16 - 1) / (segment_size * 16);
    std::vector<std::uint64_t> counts(bins, 0);
    if (nb == 0) return counts;
    std::vector<std::uint64_t> local(nb * bins, 0);
    const auto nbb = static_cast<std::ptrdiff_t>(nb);
#if defined(_OPENMP)
#pragma omp parallel for schedule(static) if (n >= parallel_threshold)
#endif
    for (std::ptrdiff_t b = 0; b < nbb; ++b) {
      // Eight interleaved sub-histograms, element i + r counted in sub-histogram r, incremented
      // without a branch: runs of equal keys (common in a radix select's first digit) would
      // otherwise chain the increments of one counter through memory (bench_masks'
      // BM_fisher_refresh with element units went from 17.4 to 14.8 copy passes).
      constexpr std::size_t ways = 8;
      // locals, not the shared variables of the parallel region: the counter stores cannot alias them
      const std::size_t nbins = bins, stride = bins + 1;  // bin `nbins` of each sub-histogram: left-out keys
      const F key_of = key;
      std::vector<std::uint32_t>& sub = scratch<std::uint32_t>(ways * stride);  // this thread's, reused
      std::fill(sub.begin(), sub.end(), 0u);
      const std::size_t lo = static_cast<std::size_t>(b) * segment_size * 16,
                        hi = std::min(n, lo + segment_size * 16);
      std::size_t i = lo;
      // unconditional increments (left-out keys go to the extra bin): no branch on the data
      for (; i + ways <= hi; i += ways)
        for (std::size_t r = 0; r < ways; ++r) {
          const auto k = static_cast<std::size_t>(key_of(i + r));
          ++sub[r * stride + (k < nbins ? k : nbins)];
        }
      for (; i < hi; ++i) {
        const auto k = static_cast<std::size_t>(key_of(i));
        ++sub[k < nbins ? k : nbins];
      }
      std::uint64_t* h = local.data() + static_cast<std::size_t>(b) * bins;
      for (std::size_t k = 0; k < bins; ++k) {
        std::uint64_t c = 0;
        for (std::size_t r = 0; r < ways; ++r) c += sub[r * stride + k];
        h[k] = c;
      }
    }
    for (std::size_t b = 0; b < nb; ++b)
      for (std::size_t k = 0; k < bins; ++k) counts[k] += local[b * bins + k];
    return counts;
  }

  /// One pass over i in [0, n) with `code(i)` in {0, 1, 2}: counts the 1s, and writes the indices
  /// of the 2s in ascending order to `out` (host memory) when there are at most `cap` of them
  /// (otherwise `out` is left unspecified; the counts are exact either way). A classifier may offer
  /// `group(i) -> code_group` for indices i … i + 31 (a SIMD form; mask/detail/score_top_k.hpp),
  /// which then does the work 32 indices at a time, the indices of the 2s read off its bit mask.
  /// Thread-count invariant.
  template <class F>
  static count_collect_result count_and_collect(std::size_t n, const F& code, std::uint64_t* out,
                                                std::size_t cap) {
    constexpr std::size_t block = segment_size * 16;
    const std::size_t nb = (n + block - 1) / block;
    if (nb == 0) return {};
    std::vector<std::uint64_t> counted(nb), found(nb), first(nb + 1), at(nb);
    std::vector<const std::uint64_t*> list_of(nb);
    const auto nbb = static_cast<std::ptrdiff_t>(nb);
#if defined(_OPENMP)
#pragma omp parallel if (n >= parallel_threshold)
#endif
    {
      thread_local std::vector<std::uint64_t> mine;  // this thread's indices, block after block
      mine.clear();
      const F f = code;  // a local copy: its fields stay in registers
#if defined(_OPENMP)
#pragma omp for schedule(static)
#endif
      for (std::ptrdiff_t b = 0; b < nbb; ++b) {
        const std::size_t lo = static_cast<std::size_t>(b) * block, hi = std::min(n, lo + block);
        const std::size_t start = mine.size();
        std::uint64_t ones = 0, twos = 0;
        std::size_t i = lo;
        if constexpr (requires {
                        { f.group(i) } -> std::same_as<code_group>;
                      }) {
          for (; i + 32 <= hi; i += 32) {
            const code_group c = f.group(i);
            ones += c.ones;
            if (c.twos != 0) {
              twos += static_cast<std::uint32_t>(std::popcount(c.twos));
              if (mine.size() < cap)  // past cap nothing is copied: stop storing
                for (std::uint32_t m = c.twos; m != 0; m &= m - 1)
                  mine.push_back(i + static_cast<std::size_t>(std::countr_zero(m)));
            }
          }
        }
        for (; i < hi; ++i) {
          const std::uint32_t c = f(i);
          ones += c == 1;
          twos += c == 2;
          if (c == 2 && mine.size() < cap) mine.push_back(i);
        }
        counted[b] = ones;
        found[b] = twos;  // all stored when the total fits (no list then reaches cap)
        at[b] = start;
      }
      // the list no longer grows: publish where this thread's blocks are (the same static
      // schedule over the same count gives each thread the same blocks)
#if defined(_OPENMP)
#pragma omp for schedule(static)
#endif
      for (std::ptrdiff_t b = 0; b < nbb; ++b) list_of[b] = mine.data() + at[b];
#if defined(_OPENMP)
#pragma omp single
#endif
      for (std::size_t b = 0; b < nb; ++b) first[b + 1] = first[b] + found[b];
      if (first[nb] <= cap) {
#if defined(_OPENMP)
#pragma omp for schedule(static)
#endif
        for (std::ptrdiff_t b = 0; b < nbb; ++b) std::copy(list_of[b], list_of[b] + found[b], out + first[b]);
      }
    }
    count_collect_result r;
    for (std::size_t b = 0; b < nb; ++b) r.counted += counted[b];
    r.collected = first[nb];
    return r;
  }

  /// Number of threads a large pass uses.
  static int threads() {
#if defined(_OPENMP)
    return omp_get_max_threads();
#else
    return 1;
#endif
  }

 private:
  /// Per-thread buffer of `n` partial sums, reused across calls so that a step allocates nothing
  /// once it has run (the caller overwrites or clears every entry it reads).
  template <class R>
  static std::vector<R>& scratch(std::size_t n) {
    thread_local std::vector<R> v;
    v.resize(n);
    return v;
  }

  /// Runs `body(from, to)` over [0, n) cut as `omp for schedule(static)` cuts it (one contiguous
  /// share per thread, the first n mod T threads one item more), on OpenMP's threads when
  /// `parallel`; with `Dispatch`, each share in one call of the clone for the process's
  /// instruction set. (A call per segment, with its prologue, stack realignment and vzeroupper,
  /// held bench_passes' ascend over 1000 tensors of 100 entries at 31–37 µs; 25–28 µs by shares.)
  /// What a share does must not depend on the cut: a segment's work and a reduction's partials do
  /// not.
  template <bool Dispatch, class Body>
  static void run_split(std::ptrdiff_t n, bool parallel, const Body& body) {
    const host::isa which = Dispatch ? host::active_isa() : host::isa::baseline;
    const auto share = [&](std::ptrdiff_t from, std::ptrdiff_t to) {
      if (from >= to) return;
      if constexpr (Dispatch)
        host::run_on(which, [&] { body(from, to); });
      else
        body(from, to);
    };
#if defined(_OPENMP)
    if (parallel && n > 1) {
#pragma omp parallel
      {
        const std::ptrdiff_t t = omp_get_thread_num(), nt = omp_get_num_threads();
        const std::ptrdiff_t q = n / nt, extra = n % nt;
        const std::ptrdiff_t from = t * q + (t < extra ? t : extra);
        share(from, from + q + (t < extra ? 1 : 0));
      }
      return;
    }
#else
    static_cast<void>(parallel);
#endif
    share(0, n);
  }

  /// Runs `run(segment, form)` for every segment of the range, `form` pass f's form for the
  /// segment's tensor (host/tensor_forms.hpp), each thread's share on the process's instruction
  /// set when f is a hot pass (host/isa_clones.hpp); `fence`: the share's streaming stores fenced
  /// at its end.
  template <class W, class G, class F, class Run>
  static void each_segment(const pass_range<W, G>& r, const F& f, bool fence, const Run& run) {
    const auto nseg = static_cast<std::ptrdiff_t>(r.count);
    const tensor_rec<W, G>* tensors = r.tensors;
    const segment* segs = r.segments;
    run_split<host::dispatched<F, W, G>>(nseg, r.elements >= parallel_threshold,
                                         [&](std::ptrdiff_t from, std::ptrdiff_t to) {
      host::for_each_form_run(f, tensors, segs, from, to, [&](std::ptrdiff_t s, const F& form) {
        if (s + 1 < nseg) host::prefetch_segment(tensors, segs[s + 1]);
        run(segs[s], form);
      });
      if (fence) host::stream_fence();
    });
  }

  /// Segment s resolved to its tensor's memory, `len` entries of it (the group forms' view).
  template <class W, class G>
  static segment_view<W, G> view_of(const tensor_rec<W, G>* tensors, const segment& s, std::uint32_t len) {
    const tensor_rec<W, G>& t = tensors[s.tensor];
    return {t.w + s.local, t.g + s.local, len, t.flags, s.index, s.tensor};
  }

  /// One segment of a `for_each` (`f`: the pass's form for the segment's tensor, host/tensor_forms.hpp):
  /// by the pass's host segment form when it has one, else element by element.
  template <class W, class G, class F>
  static FLATMIN_SUM_INLINE void segment_pass(const tensor_rec<W, G>* tensors, const segment& s, const F& f) {
    if constexpr (std::is_same_v<W, G> && host::has_segment_form<F, W>) {
      host::segment_form<F>::run(f, view_of(tensors, s, s.len), s.slot);
    } else {
      run_segment(tensors, s, f);
    }
  }

  /// Segments [from, to) of a reduction by the pass's group form, into partial[from … to): with
  /// Q = ⌊(to − from)/M⌋, group q reads segments from + q, from + q + Q, …, from + q + (M−1)·Q side by
  /// side (streams a quarter of the share apart; a form that runs its segments one at a time,
  /// host::reads_side_by_side, gets M adjacent ones), then the last (to − from) mod M segments
  /// form a short group. Each segment's sum is its own (summation.hpp), so neither the grouping nor the
  /// share changes a bit. Adjacent segments side by side (four streams 16 KB apart) had read
  /// memory more slowly than one stream on the AMD EPYC of bench/RESULTS.md: bench_passes'
  /// global_norm at N = 10^7, one thread, went from 2.1-2.7 ms (adjacent) to 1.4-2.4 ms (apart).
  template <class R, class W, class G, class F>
  static FLATMIN_SUM_INLINE void reduce_groups(const tensor_rec<W, G>* tensors, const segment* segs,
                                               std::ptrdiff_t from, std::ptrdiff_t to, const F& f,
                                               R* partial) {
    constexpr std::uint32_t M = reduction_group;
    constexpr bool apart = host::reads_side_by_side<F>;  // else adjacent segments, one at a time
    const std::ptrdiff_t q_count = (to - from) / M, step = apart ? q_count : 1;
    segment_view<W, G> v[M];
    for (std::ptrdiff_t q = 0; q < q_count; ++q) {
      const std::ptrdiff_t first = apart ? from + q : from + q * M;
      for (std::uint32_t m = 0; m < M; ++m) {
        const segment& s = segs[first + std::ptrdiff_t(m) * step];
        v[m] = view_of(tensors, s, s.len);
      }
      host::group_form<F>::run(f, v, host::group_out<R>{partial + first, step});
    }
    const std::ptrdiff_t first = from + q_count * M;
    if (first == to) return;
    // the short group: past the last segment, an empty run (its result is dropped)
    for (std::uint32_t m = 0; m < M; ++m) {
      const bool in = first + m < to;
      v[m] = view_of(tensors, segs[in ? first + m : first], in ? segs[first + m].len : 0u);
    }
    R out[M];
    host::group_form<F>::run(f, v, host::group_out<R>{out, 1});
    for (std::uint32_t m = 0; m < M && first + m < to; ++m) partial[first + m] = out[m];
  }

  /// Segment s element by element, its weights at `weights` (the tensor's own by default; the
  /// streamed descent's buffer).
  template <class W, class G, class F>
  static FLATMIN_SUM_INLINE void run_segment(const tensor_rec<W, G>* tensors, const segment& s, const F& f,
                                             W* weights = nullptr) {
    // f: resolved for this tensor (host/tensor_forms.hpp), so no per-tensor lookup is left in the
    // loop; a local of the caller's, so the stores through w / g cannot alias its fields
    const tensor_rec<W, G>& t = tensors[s.tensor];
    W* FLATMIN_RESTRICT w = weights != nullptr ? weights : t.w + s.local;
    G* FLATMIN_RESTRICT g = t.g + s.local;
    // the segment's fields as locals too: a store through a 16-bit weight type (which may alias
    // anything, numeric/bfloat16.hpp) would otherwise make the loop reload them at every entry,
    // which keeps it from vectorising
    const std::uint32_t flags = t.flags, len = s.len, tensor = s.tensor;
    const std::uint64_t index = s.index, slot = s.slot;
    if constexpr (host::independent_entries<F>) {
      // the last len mod 16 entries apart (FLATMIN_SIMD4): bench_passes descend_adamw over 1000
      // tensors of 100, one thread, went from 70-75 to 50-59 us (one tensor of 10^5: 42 us)
      const std::uint32_t body = len - len % 16;
      FLATMIN_IVDEP
      for (std::uint32_t j = 0; j < body; ++j) f(elem<W, G>{w[j], g[j], index + j, slot + j, tensor, flags});
      FLATMIN_SIMD4
      for (std::uint32_t j = body; j < len; ++j)
        f(elem<W, G>{w[j], g[j], index + j, slot + j, tensor, flags});
    } else {
      for (std::uint32_t j = 0; j < len; ++j) f(elem<W, G>{w[j], g[j], index + j, slot + j, tensor, flags});
    }
  }

  template <class R, class W, class G, class F>
  static FLATMIN_SUM_INLINE R reduce_segment(const tensor_rec<W, G>* tensors, const segment& s, const F& f) {
    const tensor_rec<W, G>& t = tensors[s.tensor];
    W* w = t.w + s.local;
    G* g = t.g + s.local;
    const std::uint32_t flags = t.flags;
    const std::uint32_t len = s.len;
    return strand_sum<R>(len, [&](std::uint32_t j) {
      return f(elem<W, G>{w[j], g[j], s.index + j, s.slot + j, s.tensor, flags});
    });
  }
};

}  // namespace flatmin::backend
