#pragma once
/// @file low_precision.hpp
/// An MLP trained with 16-bit weights and gradients, as a bf16 / fp16 training run holds them,
/// while the network computes in float (as 16-bit kernels accumulate in float):
///
///     examples::mlp net(...);
///     examples::low_precision<flatmin::bfloat16, flatmin::bfloat16> lp(net);  // weights → bf16
///     auto opt = flatmin::sam(lp.params(), base);        // precision<bfloat16>: float state
///     opt.options().master_weights = true;               // float master copy in the optimizer
///     opt.step([&] {
///       lp.to_model();                                   // the model reads the 16-bit weights
///       const double loss = net.loss_and_gradient(x, y);
///       lp.from_model(opt.loss_scale());                 // g · scale rounded to the 16-bit type
///       return loss;
///     });
///
/// The 16-bit buffers are the user's memory the optimizer updates; the network's float matrices
/// are a working copy, refreshed from them before every forward pass. Multiplying the float
/// gradient by the loss scale before rounding is what scaling the loss before a 16-bit backward
/// pass does to the stored gradient (fp16 overflows to ±inf above 65504, which the optimizer's
/// dynamic loss scaler detects and backs off from).

#include <string>
#include <vector>

#include <flatmin/flatmin.hpp>

#include "mlp.hpp"

namespace examples {

template <class W, class G>
class low_precision {
 public:
  /// Rounds the network's float weights to W (the 16-bit model) and views them with G gradients,
  /// under the names and options of `mlp::register_params`.
  explicit low_precision(mlp& net) : net_(net) {
    for (auto& d : net.layers) {
      add(d.weight.data(), static_cast<std::size_t>(d.weight.size()));
      add(d.bias.data(), static_cast<std::size_t>(d.bias.size()));
    }
    for (std::size_t l = 0; l < net.layers.size(); ++l) {  // the buffers no longer move
      const std::string name = "fc" + std::to_string(l + 1);
      params_.add(name + ".weight", w_[2 * l].data(), g_[2 * l].data(), {w_[2 * l].size()});
      params_.add(name + ".bias", w_[2 * l + 1].data(), g_[2 * l + 1].data(), {w_[2 * l + 1].size()},
                  flatmin::tensor_options{.weight_decay = false, .adaptive = false});
    }
    to_model();
  }
  low_precision(const low_precision&) = delete;
  low_precision& operator=(const low_precision&) = delete;

  const flatmin::param_set<W, G>& params() const { return params_; }

  /// The network's float weights ← the 16-bit weights (exact: every W value is a float).
  void to_model() {
    for (std::size_t t = 0; t < w_.size(); ++t)
      for (std::size_t i = 0; i < w_[t].size(); ++i) model_w_[t][i] = static_cast<float>(w_[t][i]);
  }
  /// The 16-bit gradients ← the network's float gradients times `scale`, rounded to G.
  void from_model(double scale) {
    const auto s = static_cast<float>(scale);
    std::size_t t = 0;
    for (auto& d : net_.layers)
      for (const float* grad : {d.weight_grad.data(), d.bias_grad.data()}) {
        for (std::size_t i = 0; i < g_[t].size(); ++i) g_[t][i] = G(grad[i] * s);
        ++t;
      }
  }

 private:
  void add(float* w, std::size_t n) {
    model_w_.push_back(w);
    w_.emplace_back(n);
    g_.emplace_back(n, G(0.0f));
    for (std::size_t i = 0; i < n; ++i) w_.back()[i] = W(w[i]);
  }

  mlp& net_;
  std::vector<float*> model_w_;       ///< the network's float weights, per tensor
  std::vector<std::vector<W>> w_;     ///< the 16-bit weights (what the optimizer updates)
  std::vector<std::vector<G>> g_;     ///< the 16-bit gradients (what the optimizer reads)
  flatmin::param_set<W, G> params_;
};

}  // namespace examples
