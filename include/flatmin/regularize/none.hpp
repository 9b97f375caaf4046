#pragma once
/// @file none.hpp
/// `regularize::none` — the descent gradient is used as it is.

#include "../backend/layout.hpp"

namespace flatmin::regularize {

struct none {
  static constexpr const char* name = "none";  ///< in checkpoints' composition identity
  void validate() const {}

  template <class T, class Backend>
  class state {
   public:
    struct view {
      FLATMIN_HD T operator()(T /*w*/, T g, const backend::elem_of<T, Backend>& /*e*/) const { return g; }
    };
    state(const none&, const backend::layout<T, Backend>&) {}
    /// Called once per applied step, after g_adv is known to be finite; may run reductions.
    view prepare(const none&, const backend::layout<T, Backend>&, std::size_t /*t*/, T /*inv_scale*/) {
      return {};
    }
  };
};

}  // namespace flatmin::regularize
