#pragma once
/// @file weight_store.hpp
/// How the passes of a step read and write the weights, when the weights are 16-bit storage
/// (params/precision.hpp's three modes). A pass reads the point it moves from with `read(e)` and
/// writes the new weight with `write(e, x)`:
/// - `nearest_store`: the user's weights, converted to T; written rounded to nearest even (modes
///   1 and 3, and every precision without 16-bit weights);
/// - `stochastic_store`: the same read; written by `stochastic_round` keyed by (seed, step, global
///   index), so that every backend, thread count and launch order writes the same bits (mode 1
///   with `rounding::stochastic`);
/// - `master_store`: the optimizer's copy in T (global index); written there, then rounded to
///   nearest into the user's weights (mode 2).
/// The perturbation is always written rounded to nearest (it is undone bit-exactly from a copy).

#include <cstdint>

#include "../backend/layout.hpp"
#include "counter_hash.hpp"

namespace flatmin::kernels {

/// x rounded to one of its two neighbours a ≤ x ≤ b in W (a 16-bit storage type with a `bits`
/// member), b with probability (x − a) / (b − a), drawn from the top 24 bits of `hash`: unbiased
/// (E[result] = x to 2^-24 of a spacing). Exact values, ±inf, NaN and values that round to
/// nearest to ±inf are rounded to nearest.
template <class W, class T>
FLATMIN_HD inline W stochastic_round(T x, std::uint64_t hash) {
  const W a = static_cast<W>(x);  // the nearest: one of the two neighbours
  const T ad = static_cast<T>(a);
  if (!(ad - ad == T(0)) || ad == x) return a;
  const T ax = x < T(0) ? -x : x, aa = ad < T(0) ? -ad : ad;
  W b = a;  // the other neighbour, on x's side of a (sign and magnitude: one step in the bits)
  b.bits = static_cast<std::uint16_t>(ax > aa ? a.bits + 1u : a.bits - 1u);
  const T bd = static_cast<T>(b);
  const T p = (x - ad) / (bd - ad);  // in (0, 1/2]; 0 when b is ±inf (x below the overflow tie)
  const T u = static_cast<T>(static_cast<std::uint32_t>(hash >> 40)) * T(5.9604644775390625e-8);  // 2^-24
  return u < p ? b : a;
}

/// The stream of `counter_hash` the stochastic rounding of step t draws from: above the masks'
/// streams (step numbers, < 2^53), so that a mask and the rounding with one seed are independent.
FLATMIN_HD inline std::uint64_t rounding_stream(std::uint64_t step) {
  return step | (std::uint64_t{1} << 63);
}

template <class W, class T>
struct nearest_store {
  static constexpr bool master = false;
  static constexpr bool stochastic = false;
  template <class G>
  FLATMIN_HD T read(const backend::elem<W, G>& e) const {
    return static_cast<T>(e.w);
  }
  template <class G>
  FLATMIN_HD void write(const backend::elem<W, G>& e, T x) const {
    e.w = static_cast<W>(x);
  }
};

template <class W, class T>
struct stochastic_store {
  static constexpr bool master = false;
  static constexpr bool stochastic = true;
  std::uint64_t seed;
  std::uint64_t stream;  ///< rounding_stream(step)
  template <class G>
  FLATMIN_HD T read(const backend::elem<W, G>& e) const {
    return static_cast<T>(e.w);
  }
  template <class G>
  FLATMIN_HD void write(const backend::elem<W, G>& e, T x) const {
    e.w = stochastic_round<W>(x, counter_hash(seed, stream, e.i));
  }
};

template <class W, class T>
struct master_store {
  static constexpr bool master = true;
  static constexpr bool stochastic = false;
  T* copy;  ///< the master weights, global index
  template <class G>
  FLATMIN_HD T read(const backend::elem<W, G>& e) const {
    return copy[e.i];
  }
  template <class G>
  FLATMIN_HD void write(const backend::elem<W, G>& e, T x) const {
    copy[e.i] = x;
    e.w = static_cast<W>(x);
  }
};

/// copy[i] ← w_i in T (the master weights from the user's).
template <class T>
struct load_master {
  T* copy;
  template <class W, class G>
  FLATMIN_HD void operator()(const backend::elem<W, G>& e) const {
    copy[e.i] = static_cast<T>(e.w);
  }
};

}  // namespace flatmin::kernels
