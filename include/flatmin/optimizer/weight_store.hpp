#pragma once
/// @file weight_store.hpp
/// The optimizer's side of 16-bit weights (params/precision.hpp, modes 1 and 2): the master copy
/// when `optimizer_options::master_weights` is on, and which write policy of
/// kernels/weight_store.hpp a pass gets from the options.

#include <cstdint>

#include "../backend/layout.hpp"
#include "../kernels/weight_store.hpp"
#include "../params/precision.hpp"
#include "composition.hpp"

namespace flatmin::detail {

template <class W, class T, class Backend>
class weight_store {
 public:
  /// Whether W is 16-bit storage: only then do the options choose among write policies.
  static constexpr bool narrow = is_storage16<W>;

  weight_store(const optimizer_options& o, const backend::layout<T, Backend>& l)
      : on_((check_rules(o), o.master_weights)),
        master_(Backend::template make_vector<T>(o.master_weights ? l.numel() : 0)) {
    if (on_) reload(l);
  }

  /// Throws std::invalid_argument for a precision option the weight type W has no use for.
  void check(const optimizer_options& o) const { check_rules(o); }
  /// Follows `o.master_weights` between steps: switched on, the copy is made from the user's
  /// weights as they are (the factories' optimizers turn it on after construction); switched off,
  /// it is dropped (the 16-bit weights hold the master rounded, as after every step).
  void sync(const optimizer_options& o, const backend::layout<T, Backend>& l) {
    if (o.master_weights == on_) return;
    auto fresh = Backend::template make_vector<T>(o.master_weights ? l.numel() : 0);
    master_.swap(fresh);
    on_ = o.master_weights;
    reload(l);
  }
  static void check_rules(const optimizer_options& o) {
    static_cast<void>(o);
    if constexpr (!narrow) {
      check_option(!o.master_weights, "optimizer_options", "master_weights", 1.0,
                   "false unless the weights are bfloat16 or half");
      check_option(o.weight_rounding == rounding::nearest, "optimizer_options", "weight_rounding",
                   static_cast<double>(o.weight_rounding),
                   "rounding::nearest unless the weights are bfloat16 or half");
    }
  }

  /// master ← the user's weights.
  void reload(const backend::layout<T, Backend>& l) {
    if (on_) Backend::for_each(l.full(), kernels::load_master<T>{Backend::data(master_)});
  }
  bool on() const { return on_; }

  /// f(store) with the write policy of the base step of step t.
  template <class F>
  void for_descent(const optimizer_options& o, std::size_t t, F&& f) {
    if constexpr (narrow) {
      if (on_) return f(kernels::master_store<W, T>{Backend::data(master_)});
      if (o.weight_rounding == rounding::stochastic)
        return f(kernels::stochastic_store<W, T>{o.rounding_seed, kernels::rounding_stream(t)});
    }
    f(kernels::nearest_store<W, T>{});
  }
  /// f(store) with the policy the ascent reads its starting point through.
  template <class F>
  void for_ascent(F&& f) {
    if constexpr (narrow)
      if (on_) return f(kernels::master_store<W, T>{Backend::data(master_)});
    f(kernels::nearest_store<W, T>{});
  }

  std::size_t bytes() const { return master_.size() * sizeof(T); }
  template <class F>
  void visit(F& f) {
    if (on_) f("master_weights", master_);
  }

 private:
  bool on_;
  typename Backend::template vector<T> master_;
};

}  // namespace flatmin::detail
