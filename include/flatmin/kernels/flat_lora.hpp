#pragma once
/// @file flat_lora.hpp
/// The row kernel of Flat-LoRA's perturbation (perturb/flat_lora.hpp): one index per row of every
/// frozen base weight of the layout (backend::lora_base_rec), rows numbered across the bases.
///
/// Apply, for row i of a base W with merged weight W′ = W + s·B·A (n_in = its columns):
///
///     σ_i = c · ‖W′_i‖ / √n_in          (c = f_t·ρ; ‖W′_i‖ in double, row_sum's fixed order)
///     W_ij ← W_ij + σ_i z_e,            z_e = standard_normal(counter_hash(seed, stream, e))
///
/// with e the entry's number across the bases. Undo subtracts the same σ_i z_e (regenerated from
/// the seed, σ_i kept per row), or copies the row back from `saved` when the apply saved it
/// (the exact restore). Rows are independent: any order, any backend, the same bits.

#include <cstddef>
#include <cstdint>

#include "../backend/layout.hpp"
#include "../config.hpp"
#include "counter_hash.hpp"
#include "gaussian.hpp"
#include "math.hpp"
#include "rows.hpp"

namespace flatmin::kernels {

template <class T, class W, class G>
struct flat_lora_row {
  const backend::tensor_rec<W, G>* tensors;  ///< the layout's table (A and B of each pair)
  const backend::lora_base_rec<W>* bases;
  const std::uint32_t* row_base;  ///< per row (across the bases), its base
  T* sigma;                       ///< per row: σ_i (written by apply, read by undo)
  W* saved;                       ///< per entry: W before the apply (exact restore), or nullptr
  double coef;                    ///< c = f_t·ρ
  std::uint64_t seed;
  std::uint64_t stream;
  bool undo;
  /// backend::eigen runs each row in its ISA clones (host/isa_clones.hpp): the draws vectorise.
  static constexpr bool isa_cloned = true;

  FLATMIN_HD void operator()(std::size_t r) const {
    const backend::lora_base_rec<W>& b = bases[row_base[r]];
    const std::uint64_t i = r - b.first_row;
    W* w = b.w + i * b.cols;
    const std::uint64_t e0 = b.first_entry + i * b.cols;
    if (undo) {
      if (saved) {
        for (std::uint64_t j = 0; j < b.cols; ++j) w[j] = saved[e0 + j];
      } else {
        const T s = sigma[r];
        for (std::uint64_t j = 0; j < b.cols; ++j)
          w[j] = static_cast<W>(static_cast<T>(static_cast<T>(w[j]) - noise(s, e0 + j)));
      }
      return;
    }
    const W* a = tensors[b.a].w;                  // {rank, cols}
    const W* brow = tensors[b.b].w + i * b.rank;  // row i of B, {rows, rank}
    const double n2 = row_sum(b.cols, [&](std::uint64_t j) {
      double m = 0;
      for (std::uint64_t k = 0; k < b.rank; ++k)
        m = m + static_cast<double>(static_cast<T>(brow[k])) *
                    static_cast<double>(static_cast<T>(a[k * b.cols + j]));
      const double x = static_cast<double>(static_cast<T>(w[j])) + b.scale * m;
      return x * x;
    });
    const T s = static_cast<T>(coef * fm_sqrt(n2) / fm_sqrt(static_cast<double>(b.cols)));
    sigma[r] = s;
    if (saved)
      for (std::uint64_t j = 0; j < b.cols; ++j) saved[e0 + j] = w[j];
    for (std::uint64_t j = 0; j < b.cols; ++j)
      w[j] = static_cast<W>(static_cast<T>(static_cast<T>(w[j]) + noise(s, e0 + j)));
  }

  /// ε_e = σ_i · z_e, rounded once to T.
  FLATMIN_HD T noise(T s, std::uint64_t e) const {
    return static_cast<T>(static_cast<double>(s) * standard_normal(counter_hash(seed, stream, e)));
  }
};

/// n_in σ_i² of row i: summed by reduce_index into the expected ‖ε‖² (the report's ‖ε‖).
template <class T, class W>
struct flat_lora_energy {
  const backend::lora_base_rec<W>* bases;
  const std::uint32_t* row_base;
  const T* sigma;
  FLATMIN_HD double operator()(std::size_t r) const {
    const double s = static_cast<double>(sigma[r]);
    return static_cast<double>(bases[row_base[r]].cols) * s * s;
  }
};

}  // namespace flatmin::kernels
