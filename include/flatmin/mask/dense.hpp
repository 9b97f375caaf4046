#pragma once
/// @file dense.hpp
/// `mask::dense` — every perturbable entry is perturbed (m = 1). No state.

#include "../backend/layout.hpp"

namespace flatmin::mask {

struct dense {
  static constexpr const char* name = "dense";  ///< in checkpoints' composition identity
  void validate() const {}

  template <class T, class Backend>
  class state {
   public:
    /// m(i) = 1.
    struct view {
      /// m ≡ 1, known at compile time (lets the statistics pass skip the mask).
      static constexpr bool all = true;
      FLATMIN_HD bool operator()(std::size_t /*i*/, std::uint32_t /*flags*/) const { return true; }
    };
    /// The norm of ε runs over the same entries as the mask.
    static constexpr bool norm_over_mask = true;
    /// Saved weights are indexed by the global index (no compact storage).
    static constexpr bool compact = false;

    state(const dense&, const backend::layout<T, Backend>&) {}
    /// Called at the start of each ascent, before the statistics pass (cheap, host side).
    void begin_step(const dense&, std::size_t /*step*/) {}
    /// Called once g is known to be finite; may run passes over g. Returns whether the mask changed.
    bool refresh(const dense&, const backend::layout<T, Backend>&, std::size_t /*step*/, T /*inv_scale*/) {
      return false;
    }
    view get_view() const { return {}; }
    /// The segments the ascent and restore passes run over.
    backend::range_of<T, Backend> range(const backend::layout<T, Backend>& l) const { return l.full(); }
    /// Size of the saved-weights buffer.
    std::size_t saved_size(const backend::layout<T, Backend>& l) const { return l.numel(); }
    /// Radius multiplier (ESAM's 1/β).
    double radius_scale() const { return 1.0; }
    std::size_t bytes() const { return 0; }
    template <class F>
    void visit(F&&) {}
  };
};

}  // namespace flatmin::mask
