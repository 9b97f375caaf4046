#pragma once
/// @file score_top_k.hpp
/// Exact top-k of per-unit scores held in backend memory (one T per unit: non-negative for the
/// candidates, −1 for the others), in about one pass over the scores.
///
/// Radix selection (top_k.hpp) needs three histogram passes for float keys, each a scattered
/// counter update per unit. Here, for n ≥ `bracket_min_units`:
///   1. a strided sample of `bracket_sample` scores brackets the k-th largest: with p = k / n,
///      the sample's candidates at descending ranks p·S ∓ (4·√(S·p·(1−p)) + 4) give hi and lo;
///   2. one pass (`Backend::count_and_collect`) counts the scores above hi and writes the indices
///      of the band lo ≤ s ≤ hi (about 1–2 % of the units; branch-free, vectorisable compares);
///   3. if the k-th largest is in the band (above < k ≤ above + band), radix selection over the
///      band alone finds it and the index of the last tie to keep; otherwise (a bracket missed,
///      about once in 10^4 refreshes, or a band swollen by ties) radix selection over all units.
/// The result is the same exact selection either way: k units, the largest scores, ties to the
/// lower index. The sample only decides how fast it is found.
///
/// `score_bits` then writes one mask bit per unit from the selection (a compare per unit; for
/// float scores on SSE2 hosts four at a time).

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <limits>
#include <optional>
#include <type_traits>
#include <vector>

#include "../../backend/layout.hpp"
#include "top_k.hpp"
#include "units.hpp"

#if defined(__SSE2__) && !defined(__CUDACC__)
#include <emmintrin.h>
#define FLATMIN_SCORE_BITS_SSE2 1
#endif

namespace flatmin::mask::detail {

/// The units a top-k of scores keeps: s > threshold, or s == threshold at a unit index
/// ≤ last_tie. Non-candidates (s < 0) never pass; `none` keeps nothing.
template <class T>
struct score_selection {
  const T* score = nullptr;
  T threshold = T(0);
  std::uint64_t last_tie = ~std::uint64_t{0};
  bool none = true;
  bool bracketed = false;  ///< found through the sampled bracket (else by radix selection over all)

  FLATMIN_HD bool operator()(std::size_t u) const {
    const T s = score[u];
    return !none && (s > threshold || (s == threshold && u <= last_tie));
  }
};

/// Inverse of `float_key` for a non-negative value.
template <class T>
T value_of_key(std::uint64_t k) {
  if constexpr (sizeof(T) == 4) {
    const auto b = static_cast<std::uint32_t>(k);
    T x;
    std::memcpy(&x, &b, sizeof x);
    return x;
  } else {
    T x;
    std::memcpy(&x, &k, sizeof x);
    return x;
  }
}

/// Sample size and the smallest unit count for which the bracket is tried.
inline constexpr std::size_t bracket_sample = std::size_t{1} << 15;
inline constexpr std::size_t bracket_min_units = bracket_sample * 16;

/// The buffers of the sampled bracket, kept from one selection to the next (mask::fisher's state
/// holds one), so that a refresh allocates and zero-fills nothing once they have grown: on the host
/// the band's buffer alone was 2 MB of fresh pages per refresh at 10^7 units, and under CUDA each
/// buffer was a cudaMalloc and a cudaFree, which waits for the device.
template <class T, class Backend>
struct top_k_workspace {
  typename Backend::template vector<T> sample, value;
  typename Backend::template vector<std::uint64_t> band, one;
  std::vector<T> host_sample;

  /// `v` with room for at least n elements (its contents are not kept when it grows).
  template <class V>
  static V& at_least(V& v, std::size_t n) {
    if (v.size() < n) {
      V grown = Backend::template make_vector<typename V::value_type>(n);
      v.swap(grown);
    }
    return v;
  }
  std::size_t bytes() const {
    return (sample.size() + value.size() + host_sample.size()) * sizeof(T) +
           (band.size() + one.size()) * sizeof(std::uint64_t);
  }
};

/// The bits of a mask word (units lo … lo + 31) whose ties are kept: units ≤ last_tie.
FLATMIN_HD inline std::uint32_t tie_mask(std::uint64_t last_tie, std::size_t lo) {
  return last_tie >= lo + 31 ? ~0u : last_tie < lo ? 0u : (2u << (last_tie - lo)) - 1u;
}

namespace score_topk_detail {

template <class T>
struct sample_scores {
  const T* score;
  std::size_t stride;
  T* out;
  FLATMIN_HD void operator()(std::size_t j) const { out[j] = score[j * stride + stride / 2]; }
};

/// 1 above the band, 2 in it, 0 below it or not a candidate (−1 and NaN compare false).
template <class T>
struct band_code {
  const T* score;
  T lo, hi;
  FLATMIN_HD std::uint32_t operator()(std::size_t u) const {
    const T s = score[u];
    return s > hi ? 1u : (s >= lo ? 2u : 0u);
  }
  /// Units u … u + 31 (the host fast path of backend::eigen::count_and_collect).
  backend::code_group group(std::size_t u) const {
#if defined(FLATMIN_SCORE_BITS_SSE2)
    if constexpr (std::is_same_v<T, float>) {
      // four at a time: count "above" in integer lanes (a true compare is −1), keep the band's
      // compare masks and read them off only when one of them is set (rare: the band is narrow)
      const __m128 vh = _mm_set1_ps(hi), vl = _mm_set1_ps(lo);
      __m128i count = _mm_setzero_si128();
      __m128 any = _mm_setzero_ps(), in[8];
      for (unsigned q = 0; q < 8; ++q) {
        const __m128 x = _mm_loadu_ps(score + u + 4 * q);
        const __m128 above = _mm_cmpgt_ps(x, vh);
        in[q] = _mm_andnot_ps(above, _mm_cmpge_ps(x, vl));
        count = _mm_sub_epi32(count, _mm_castps_si128(above));
        any = _mm_or_ps(any, in[q]);
      }
      count = _mm_add_epi32(count, _mm_shuffle_epi32(count, 0x4e));
      count = _mm_add_epi32(count, _mm_shuffle_epi32(count, 0xb1));
      backend::code_group c{static_cast<std::uint32_t>(_mm_cvtsi128_si32(count)), 0u};
      if (_mm_movemask_ps(any) != 0)
        for (unsigned q = 0; q < 8; ++q)
          c.twos |= static_cast<std::uint32_t>(_mm_movemask_ps(in[q])) << (4 * q);
      return c;
    }
#endif
    backend::code_group c;
    for (std::uint32_t j = 0; j < 32; ++j) {
      const std::uint32_t code = (*this)(u + j);
      c.ones += code == 1;
      c.twos |= static_cast<std::uint32_t>(code == 2) << j;
    }
    return c;
  }
};

/// The band's scores, gathered once so that the selection inside the band reads them in order.
template <class T>
struct gather_band {
  const T* score;
  const std::uint64_t* unit;
  T* out;
  FLATMIN_HD void operator()(std::size_t j) const { out[j] = score[unit[j]]; }
};

/// Radix key of the band's j-th unit, from its gathered score (the band lists units in ascending
/// order, so the lower position is the lower unit index: radix selection's ties go the same way).
template <class T>
struct band_key {
  const T* value;
  FLATMIN_HD bool operator()(std::size_t j, std::uint64_t& k) const {
    k = float_key(value[j]);
    return true;
  }
};

struct copy_one {
  const std::uint64_t* from;
  std::uint64_t* to;
  FLATMIN_HD void operator()(std::size_t) const { *to = *from; }
};

/// The score predicate of a radix selection; its last tie, global with a span (offset ≠ 0), made
/// local: ties before this process's units keep none of its own (s == t is then never kept, i.e.
/// the threshold is the next value above t with every tie of it kept).
template <class T, class Key>
score_selection<T> from_radix(const T* score, const selection<Key>& sel) {
  if (sel.none) return {score};
  if (sel.all) return {score, T(0), ~std::uint64_t{0}, false};
  const T t = value_of_key<T>(sel.threshold);
  if (sel.last_tie == ~std::uint64_t{0}) return {score, t, sel.last_tie, false};
  if (sel.last_tie < sel.offset)
    return {score, std::nextafter(t, std::numeric_limits<T>::infinity()), ~std::uint64_t{0}, false};
  return {score, t, sel.last_tie - sel.offset, false};
}

/// Steps 1–3 of the file comment; nullopt when the bracket did not catch the k-th score.
template <class Backend, class T>
std::optional<score_selection<T>> bracketed(const T* score, std::size_t n, std::size_t k,
                                            top_k_workspace<T, Backend>& ws) {
  using ws_t = top_k_workspace<T, Backend>;
  const std::size_t S = bracket_sample, stride = n / S;
  T* sample = Backend::data(ws_t::at_least(ws.sample, S));
  Backend::for_each_index(S, sample_scores<T>{score, stride, sample});
  std::vector<T>& c = ws.host_sample;
  c.resize(S);
  Backend::download(sample, S, c.data());
  c.erase(std::remove_if(c.begin(), c.end(), [](T x) { return !(x >= T(0)); }), c.end());
  const double p = static_cast<double>(k) / static_cast<double>(n), r = p * static_cast<double>(S);
  const double delta = 4.0 * std::sqrt(static_cast<double>(S) * p * (1.0 - p)) + 4.0;
  const double rh = std::floor(r - delta), rl = std::ceil(r + delta);
  const auto m = static_cast<double>(c.size());
  if (rh >= m) return std::nullopt;  // fewer sampled candidates than the rank sought
  auto desc = std::greater<T>();
  T hi = std::numeric_limits<T>::infinity(), lo = T(0);
  std::size_t from = 0;
  if (rh >= 0) {
    const auto i = static_cast<std::size_t>(rh);
    std::nth_element(c.begin(), c.begin() + static_cast<std::ptrdiff_t>(i), c.end(), desc);
    hi = c[i];
    from = i + 1;
  }
  if (rl < m) {
    const auto i = static_cast<std::size_t>(rl);
    std::nth_element(c.begin() + static_cast<std::ptrdiff_t>(from),
                     c.begin() + static_cast<std::ptrdiff_t>(i), c.end(), desc);
    lo = c[i];
  }
  const double expect = (rl - std::max(rh, -1.0)) * static_cast<double>(n) / static_cast<double>(S);
  const auto cap = static_cast<std::size_t>(2.0 * expect) + 4096;
  if (cap > n / 4) return std::nullopt;  // not a narrow band: radix selection is as cheap
  std::uint64_t* band = Backend::data(ws_t::at_least(ws.band, cap));
  const backend::count_collect_result cc =
      Backend::count_and_collect(n, band_code<T>{score, lo, hi}, band, cap);
  if (cc.collected > cap || cc.counted >= k || cc.counted + cc.collected < k) return std::nullopt;
  const auto need = static_cast<std::size_t>(k - cc.counted),
             in_band = static_cast<std::size_t>(cc.collected);
  T* value = Backend::data(ws_t::at_least(ws.value, in_band));
  Backend::for_each_index(in_band, gather_band<T>{score, band, value});
  const auto sel = top_k<Backend>(in_band, need, band_key<T>{value}, float_key_bits<T>);
  if (sel.all)
    return score_selection<T>{score, lo, ~std::uint64_t{0}, false, true};  // the whole band and above: s ≥ lo
  std::uint64_t last = ~std::uint64_t{0};
  if (sel.last_tie != last) {
    std::uint64_t* one = Backend::data(ws_t::at_least(ws.one, 1));
    Backend::for_each_index(1, copy_one{band + sel.last_tie, one});
    Backend::download(one, 1, &last);
  }
  return score_selection<T>{score, value_of_key<T>(sel.threshold), last, false, true};
}

}  // namespace score_topk_detail

/// The k largest of `score[0, n)` among the candidates (score ≥ 0), ties to the lower index,
/// exactly k of them (all candidates when k ≥ their count). With a span (top_k.hpp), the k largest
/// over every process's scores: collective, by radix selection on summed histograms (the sampled
/// bracket is this process's alone, so it is not tried). `ws`: buffers to reuse (none: fresh ones).
template <class Backend, class T>
score_selection<T> score_top_k(const T* score, std::size_t n, std::size_t k, const span& sp = {},
                               top_k_workspace<T, Backend>* ws = nullptr) {
  if (sp.spans())
    return score_topk_detail::from_radix(score,
                                         top_k<Backend>(n, k, score_key<T>{score}, float_key_bits<T>, sp));
  if (k == 0 || n == 0) return {score};
  if (n >= bracket_min_units) {
    top_k_workspace<T, Backend> fresh;
    if (const auto s = score_topk_detail::bracketed<Backend>(score, n, k, ws ? *ws : fresh)) return *s;
  }
  return score_topk_detail::from_radix(score, top_k<Backend>(n, k, score_key<T>{score}, float_key_bits<T>));
}

/// Writes mask word w (units 32w … 32w + 31) from a score selection: one thread per word.
template <class T>
struct score_bits {
  score_selection<T> sel;
  std::uint32_t* bits;
  std::size_t n;
  FLATMIN_HD void operator()(std::size_t w) const {
    const std::size_t lo = w * 32, hi = lo + 32 < n ? lo + 32 : n;
    if (sel.none) {
      bits[w] = 0;
      return;
    }
#if defined(FLATMIN_SCORE_BITS_SSE2)
    if constexpr (std::is_same_v<T, float>) {
      if (hi - lo == 32) {  // whole words on the host: compare masks four at a time
        const __m128 t = _mm_set1_ps(sel.threshold);
        std::uint32_t gt = 0;
        __m128 eq_any = _mm_setzero_ps(), eq[8];
        for (unsigned q = 0; q < 8; ++q) {
          const __m128 x = _mm_loadu_ps(sel.score + lo + 4 * q);
          gt |= static_cast<std::uint32_t>(_mm_movemask_ps(_mm_cmpgt_ps(x, t))) << (4 * q);
          eq[q] = _mm_cmpeq_ps(x, t);
          eq_any = _mm_or_ps(eq_any, eq[q]);
        }
        if (_mm_movemask_ps(eq_any) != 0) {  // a tie in this word (rare)
          std::uint32_t e = 0;
          for (unsigned q = 0; q < 8; ++q) e |= static_cast<std::uint32_t>(_mm_movemask_ps(eq[q])) << (4 * q);
          gt |= e & tie_mask(sel.last_tie, lo);
        }
        bits[w] = gt;
        return;
      }
    }
#endif
    std::uint32_t b = 0;
    for (std::size_t u = lo; u < hi; ++u) b |= static_cast<std::uint32_t>(sel(u)) << (u - lo);
    bits[w] = b;
  }
};

}  // namespace flatmin::mask::detail
