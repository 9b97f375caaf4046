#pragma once
/// @file loss_scaler.hpp
/// Dynamic loss scaling for 16-bit gradients, with the rules of PyTorch's `torch.amp.GradScaler`:
///
///     a step whose gradient (g at w, or g_adv at w + ε) has a NaN or Inf entry:
///         scale ← scale · backoff_factor,  growth tracker ← 0            (the step is skipped)
///     an applied step:
///         tracker ← tracker + 1;  if tracker == growth_interval:
///             scale ← scale · growth_factor (kept only if finite),  tracker ← 0
///
/// The scale is a float, as torch's scale tensor is: each product is formed in double and rounded
/// to float once (torch's `_amp_update_scale_` kernels, aten/src/ATen/native/cuda/AmpKernels.cu and
/// its CPU twin, do the same), so a run with the same overflow pattern has the same scales.
///
/// Used through the optimizer: `optimizer_options::loss_scale = {.enabled = true}`; the user
/// multiplies the loss by `opt.loss_scale()` before each backward pass (both passes of a SAM step
/// use the same scale), the optimizer divides the scale out in every pass, skips a step whose
/// gradient overflowed, and updates the scale from the step's outcome: an fp16 user writes no
/// other scaler code. It can also be driven by hand (`update(found_inf)`) around any loop.

#include <cmath>
#include <cstdint>
#include <limits>

#include "../config.hpp"

namespace flatmin {

/// Options of the dynamic loss scaler (torch.amp.GradScaler's defaults).
struct dynamic_loss_scale {
  bool enabled = false;                  ///< off: grad_scale comes from step_args, as before
  double init_scale = 65536.0;           ///< 2^16
  double growth_factor = 2.0;            ///< > 1
  double backoff_factor = 0.5;           ///< in (0, 1)
  std::uint64_t growth_interval = 2000;  ///< applied steps in a row before the scale grows, ≥ 1

  void validate() const {
    constexpr const char* w = "dynamic_loss_scale";
    detail::check_option<float>(w, "init_scale", init_scale, detail::domain::positive);
    detail::check_option(detail::finite(growth_factor) && growth_factor > 1.0, w, "growth_factor",
                         growth_factor, "finite and > 1");
    detail::check_option(backoff_factor > 0.0 && backoff_factor < 1.0, w, "backoff_factor", backoff_factor,
                         "in (0, 1)");
    detail::check_option(growth_interval >= 1, w, "growth_interval", static_cast<double>(growth_interval),
                         ">= 1");
  }
};

/// The scaler's state: the current scale and the count of applied steps since the last change.
class loss_scaler {
 public:
  loss_scaler() = default;
  explicit loss_scaler(const dynamic_loss_scale& o) : scale_(static_cast<float>(o.init_scale)) {
    o.validate();
  }

  /// The factor the loss is multiplied by before backward.
  float scale() const { return scale_; }
  /// Applied steps in a row since the scale last changed.
  std::uint64_t growth_tracker() const { return tracker_; }

  /// One step's outcome: `found_inf` when its gradient overflowed (the step was skipped).
  void update(bool found_inf, const dynamic_loss_scale& o) {
    if (found_inf) {
      scale_ = static_cast<float>(static_cast<double>(scale_) * o.backoff_factor);
      tracker_ = 0;
      return;
    }
    const std::uint64_t successful = tracker_ + 1;
    if (successful >= o.growth_interval) {  // ≥: an interval lowered between steps takes effect at once
      const auto grown = static_cast<float>(static_cast<double>(scale_) * o.growth_factor);
      if (std::isfinite(grown)) scale_ = grown;
      tracker_ = 0;
    } else {
      tracker_ = successful;
    }
  }

  /// Checkpoint entries: the scale (as a double, exact) and the tracker.
  template <class F>
  void visit(F& f) {
    saved_scale_ = scale_;
    f("loss_scale.scale", saved_scale_);
    f("loss_scale.growth_tracker", tracker_);
  }
  /// After a load: the scale read back (refused unless it is a positive finite float).
  template <class Staged>
  static void check_load(const Staged& s) {
    const double x = s.template scalar<double>("loss_scale.scale");
    detail::check_option(std::isfinite(x) && x > 0 && x <= std::numeric_limits<float>::max() &&
                             static_cast<double>(static_cast<float>(x)) == x,
                         "checkpoint", "loss_scale.scale", x, "a positive finite float");
  }
  void after_load() { scale_ = static_cast<float>(saved_scale_); }

 private:
  float scale_ = 1.0f;
  std::uint64_t tracker_ = 0;
  double saved_scale_ = 1.0;  ///< the checkpoint's view of scale_ (entries are double or unsigned)
};

}  // namespace flatmin
