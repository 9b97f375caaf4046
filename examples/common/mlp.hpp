#pragma once
/// @file mlp.hpp
/// A small multilayer perceptron written with Eigen, for the examples: fully connected layers
/// with ReLU or tanh between them and a softmax cross-entropy loss. Its parameters and gradients
/// are Eigen matrices that a `flatmin::param_set<float>` views in place.
///
///     examples::mlp net({64, 128, 10}, examples::activation::relu, seed);
///     flatmin::param_set<float> params;
///     net.register_params(params);                  // weights: decay + adaptive; biases: neither
///     auto opt = flatmin::sam(params, flatmin::base::sgd{.lr = 0.05, .momentum = 0.9});
///     opt.step([&] { return net.loss_and_gradient(x, y); });
///
/// Samples are columns (x is features × batch). Every backward pass OVERWRITES the gradients.
///
/// Hooks beyond the plain objective, for the SAM variants that need them:
/// - `per_sample_losses(x, y)`: ℓ_i at the current weights, forward only (ESAM's data selection);
/// - `output_cotangent(x, y)` and `backprop_cotangent(x, c)`: c = ∂L/∂logits at the current
///   weights, and Jᵀc for a GIVEN c at the current weights (Functional-SAM back-propagates the
///   clean pass's c through the network at w + ε);
/// - `forward(x, tape)` / `backward(tape, d_logits)` and the public `layers`, so a wrapper can
///   reparametrise a weight (LoRA: W = W₀ + B·A, then dA = Bᵀ·dW and dB = dW·Aᵀ by the chain rule).
///
/// The registered views point into the Eigen matrices: do not resize the layers or copy the model
/// after registering it (moving is fine, Eigen moves keep the buffers).

#include <cmath>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include <Eigen/Core>
#include <flatmin/flatmin.hpp>

#include "rng.hpp"

namespace examples {

enum class activation { relu, tanh };

/// One fully connected layer, out = weight · in + bias, with its gradients.
template <class Scalar>
struct dense_layer {
  using matrix = Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic>;
  using vector = Eigen::Matrix<Scalar, Eigen::Dynamic, 1>;
  matrix weight, weight_grad;  ///< outputs × inputs
  vector bias, bias_grad;      ///< outputs
};

/// The network for any scalar type: `mlp` (float) trains, `basic_mlp<double>` serves as a
/// float64 reference in tests.
template <class Scalar>
class basic_mlp {
 public:
  using scalar = Scalar;
  using matrix = Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic>;
  using vector = Eigen::Matrix<Scalar, Eigen::Dynamic, 1>;
  using array = Eigen::Array<Scalar, Eigen::Dynamic, 1>;
  using input = Eigen::Ref<const matrix>;

  /// Activations of one forward pass, kept for the backward pass: `a[0]` is the input, `a[l]` the
  /// output of layer l after its non-linearity, and the last entry the logits (no non-linearity).
  struct tape {
    std::vector<matrix> a;
    const matrix& logits() const { return a.back(); }
  };

  /// `sizes` = {inputs, hidden..., outputs}. Weights are drawn uniformly with the variance of He
  /// (ReLU) or Glorot (tanh) initialisation from `seed`; biases start at zero.
  basic_mlp(std::vector<int> sizes, activation act, std::uint64_t seed) : sizes_(std::move(sizes)), act_(act) {
    if (sizes_.size() < 2) throw std::invalid_argument("mlp: needs at least an input and an output size");
    rng r = rng::stream(seed, 3);
    for (std::size_t l = 0; l + 1 < sizes_.size(); ++l) {
      const int in = sizes_[l], out = sizes_[l + 1];
      const bool hidden = l + 2 < sizes_.size();
      const double var = (act_ == activation::relu && hidden) ? 2.0 / in : 2.0 / (in + out);
      const double bound = std::sqrt(3.0 * var);  // U(-b, b) has variance b²/3
      dense_layer<Scalar> d;
      d.weight.resize(out, in);
      for (Eigen::Index k = 0; k < d.weight.size(); ++k)
        d.weight.data()[k] = static_cast<Scalar>((2.0 * r.uniform() - 1.0) * bound);
      d.weight_grad = matrix::Zero(out, in);
      d.bias = vector::Zero(out);
      d.bias_grad = vector::Zero(out);
      layers.push_back(std::move(d));
    }
  }

  std::vector<dense_layer<Scalar>> layers;

  int inputs() const { return sizes_.front(); }
  int outputs() const { return sizes_.back(); }

  std::size_t numel() const {
    std::size_t n = 0;
    for (const auto& d : layers) n += static_cast<std::size_t>(d.weight.size() + d.bias.size());
    return n;
  }

  /// Adds every layer as `prefix + "fc<l>.weight"` / `".bias"`. Biases get no weight decay and no
  /// adaptive (ASAM) scaling, following common practice and the official ASAM code.
  void register_params(flatmin::param_set<Scalar>& ps, const std::string& prefix = "") {
    for (std::size_t l = 0; l < layers.size(); ++l) {
      const std::string name = prefix + "fc" + std::to_string(l + 1);
      ps.add(name + ".weight", layers[l].weight, layers[l].weight_grad);
      ps.add(name + ".bias", layers[l].bias, layers[l].bias_grad,
             flatmin::tensor_options{.weight_decay = false, .adaptive = false});
    }
  }

  /// Forward pass at the current weights, keeping what backward() needs.
  void forward(const input& x, tape& t) const {
    if (x.rows() != inputs()) throw std::invalid_argument("mlp: input has the wrong number of features");
    t.a.resize(layers.size() + 1);
    t.a[0] = x;
    for (std::size_t l = 0; l < layers.size(); ++l) {
      t.a[l + 1].noalias() = layers[l].weight * t.a[l];
      t.a[l + 1].colwise() += layers[l].bias;
      if (l + 1 < layers.size()) apply_activation(t.a[l + 1]);
    }
  }

  /// Back-propagates `d_logits` (∂L/∂logits, outputs × batch) through the pass recorded in `t`
  /// and writes every parameter gradient (overwriting).
  void backward(const tape& t, const matrix& d_logits) {
    matrix delta = d_logits;
    for (std::size_t l = layers.size(); l-- > 0;) {
      auto& d = layers[l];
      d.weight_grad.noalias() = delta * t.a[l].transpose();
      d.bias_grad = delta.rowwise().sum();
      if (l == 0) break;
      matrix up = d.weight.transpose() * delta;
      // The derivative of the non-linearity, from its output: ReLU' = [a > 0], tanh' = 1 − a².
      if (act_ == activation::relu)
        delta = (t.a[l].array() > Scalar(0)).select(up, Scalar(0));
      else
        delta = up.array() * (Scalar(1) - t.a[l].array().square());
    }
  }

  matrix logits(const input& x) const {
    tape t;
    forward(x, t);
    return std::move(t.a.back());
  }

  /// Mean softmax cross-entropy over the batch; writes the gradient. The closure-protocol objective.
  Scalar loss_and_gradient(const input& x, const std::vector<int>& y) {
    forward(x, scratch_);
    matrix c;
    const Scalar loss = cross_entropy(scratch_.logits(), y, &c);
    backward(scratch_, c);
    return loss;
  }

  /// ℓ_i = −log softmax(f(x_i))[y_i] at the current weights, forward only.
  vector per_sample_losses(const input& x, const std::vector<int>& y) const {
    const matrix z = logits(x);
    vector l(z.cols());
    for (Eigen::Index j = 0; j < z.cols(); ++j) l[j] = log_sum_exp(z.col(j)) - z(label(y, j, z.rows()), j);
    return l;
  }

  /// c = ∂L/∂logits of the mean cross-entropy at the current weights (outputs × batch).
  matrix output_cotangent(const input& x, const std::vector<int>& y) const {
    matrix c;
    cross_entropy(logits(x), y, &c);
    return c;
  }

  /// Writes Jᵀc, the gradient of ⟨c, f(x)⟩, at the current weights, for a GIVEN cotangent c.
  void backprop_cotangent(const input& x, const matrix& c) {
    forward(x, scratch_);
    if (c.rows() != scratch_.logits().rows() || c.cols() != scratch_.logits().cols())
      throw std::invalid_argument("mlp: cotangent shape does not match the outputs");
    backward(scratch_, c);
  }

  /// Fraction of samples whose arg-max logit is the label.
  double accuracy(const input& x, const std::vector<int>& y) const {
    const matrix z = logits(x);
    std::size_t hits = 0;
    for (Eigen::Index j = 0; j < z.cols(); ++j) {
      Eigen::Index k;
      z.col(j).maxCoeff(&k);
      hits += static_cast<int>(k) == y[static_cast<std::size_t>(j)];
    }
    return z.cols() ? static_cast<double>(hits) / static_cast<double>(z.cols()) : 0.0;
  }

  /// Mean cross-entropy of `z` (outputs × batch) against `y`; if `grad`, also ∂/∂z = (softmax − onehot)/batch.
  static Scalar cross_entropy(const matrix& z, const std::vector<int>& y, matrix* grad = nullptr) {
    if (static_cast<std::size_t>(z.cols()) != y.size()) throw std::invalid_argument("mlp: labels and batch differ in size");
    const Scalar inv_b = Scalar(1) / static_cast<Scalar>(z.cols());
    if (grad) grad->resize(z.rows(), z.cols());
    double total = 0;
    for (Eigen::Index j = 0; j < z.cols(); ++j) {
      const Scalar m = z.col(j).maxCoeff();
      const array e = (z.col(j).array() - m).exp();
      const Scalar s = e.sum();
      const Eigen::Index k = label(y, j, z.rows());
      total += std::log(s) + m - z(k, j);
      if (grad) {
        grad->col(j) = (e / s * inv_b).matrix();
        (*grad)(k, j) -= inv_b;
      }
    }
    return static_cast<Scalar>(total / static_cast<double>(z.cols()));
  }

 private:
  void apply_activation(matrix& z) const {
    if (act_ == activation::relu)
      z = z.cwiseMax(Scalar(0));
    else
      z = z.array().tanh().matrix();
  }

  static Scalar log_sum_exp(const Eigen::Ref<const vector>& v) {
    const Scalar m = v.maxCoeff();
    return m + std::log((v.array() - m).exp().sum());
  }

  static Eigen::Index label(const std::vector<int>& y, Eigen::Index j, Eigen::Index classes) {
    const int k = y[static_cast<std::size_t>(j)];
    if (k < 0 || k >= classes) throw std::out_of_range("mlp: label " + std::to_string(k) + " out of range");
    return k;
  }

  std::vector<int> sizes_;
  activation act_;
  tape scratch_;
};

using mlp = basic_mlp<float>;

}  // namespace examples
